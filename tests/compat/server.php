<?php
// Symfony HttpFoundation upstream of the HTTP compatibility suite, on PHP's built-in server:
// GOVERNANCE_COMPAT_SEEN=FILE php -S HOST:PORT server.php (Debian's php-cli and
// php-symfony-http-foundation, which `cargo xtask setup` installs). Method override on, as
// Symfony (`framework.http_method_override`) and Laravel run it: `X-HTTP-Method-Override`, then
// `_method` in the form body or the query. PHP itself reads parameter names its own way
// (`.method` and ` _method` are `_method`, and so is the header `X.HTTP.Method.Override`).
// The routes say what they acted on and record it in FILE: GET /compat/seen lists it.
require_once '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';

use Symfony\Component\HttpFoundation\JsonResponse;
use Symfony\Component\HttpFoundation\Request;

Request::enableHttpMethodParameterOverride();
$request = Request::createFromGlobals();
$method = $request->getMethod();
$path = $request->getPathInfo();
$seen_file = getenv('GOVERNANCE_COMPAT_SEEN');
$saw = function (array $what) use ($method, $path, $seen_file) {
    $line = json_encode(['method' => $method, 'path' => $path] + $what);
    file_put_contents($seen_file, $line . "\n", FILE_APPEND | LOCK_EX);
};

if ($path === '/compat/seen' && $method === 'GET') {
    $lines = file_exists($seen_file) ? file($seen_file, FILE_IGNORE_NEW_LINES) : [];
    $answer = new JsonResponse(array_map(fn ($l) => json_decode($l, true), $lines));
} elseif ($path === '/v1/deploy' && $method === 'POST') {
    $dry_run = $request->headers->get('x-dry-run');
    $saw(['x_dry_run' => $dry_run]);
    $answer = new JsonResponse(['real_deploy' => $dry_run !== 'true', 'server' => 'symfony']);
} elseif (preg_match('#^/v1/repos/([^/]+)$#', $path, $m) && $method === 'POST') {
    $saw([]);
    $answer = new JsonResponse(['updated' => $m[1], 'method' => $method, 'server' => 'symfony']);
} elseif (preg_match('#^/v1/repos/([^/]+)$#', $path, $m) && $method === 'DELETE') {
    $saw([]);
    $answer = new JsonResponse(['deleted' => $m[1], 'server' => 'symfony']);
} else {
    $answer = new JsonResponse(['error' => 'no route', 'method' => $method, 'path' => $path], 404);
}
$answer->send();
