//! Glob matching for names and paths, without regex and without backtracking blow-ups.

use std::borrow::Cow;

/// `*` matches any run of characters, `?` any one character. The classic two-pointer
/// algorithm: at most O(len(pattern) × len(text)).
pub fn simple(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Path glob over `/`-separated segments: within a segment `*` and `?` as in [`simple`]; a
/// segment that is exactly `**` matches zero or more whole segments.
pub fn path(pattern: &str, text: &str) -> bool {
    if !is_glob(pattern) {
        // Segment by segment, a pattern without glob characters matches only itself: the same
        // as comparing the paths (without allocating; agents × policies of these per reload).
        return pattern.trim_matches('/') == text.trim_matches('/');
    }
    segments(pattern, text)
}

/// [`path`], segment by segment.
fn segments(pattern: &str, text: &str) -> bool {
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let t: Vec<&str> = text.trim_matches('/').split('/').collect();
    // reachable[j]: pattern prefix matched against text prefix of length j.
    let mut reachable = vec![false; t.len() + 1];
    reachable[0] = true;
    for seg in &p {
        let mut next = vec![false; t.len() + 1];
        if *seg == "**" {
            let mut any = false;
            for j in 0..=t.len() {
                any |= reachable[j];
                next[j] = any;
            }
        } else {
            for j in 0..t.len() {
                if reachable[j] && simple(seg, t[j]) {
                    next[j + 1] = true;
                }
            }
        }
        reachable = next;
    }
    reachable[t.len()]
}

/// Does the pattern contain glob characters?
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(GLOB_CHARS)
}

/// The characters that make a pattern a glob.
pub const GLOB_CHARS: [char; 2] = ['*', '?'];

/// The form of a request path that HTTP rules match: [`exact_path`], with ASCII letters
/// lowercased (Express routes case-insensitively by default). Rule paths are stored in this
/// form (policy compilation); the path forwarded upstream keeps its case.
pub fn match_path(path: &str) -> Cow<'_, str> {
    let p = exact_path(path);
    if p.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(p.to_ascii_lowercase())
    } else {
        p
    }
}

/// A path (normalised as the proxy normalises request paths) in the form rules compare it,
/// case kept: without a trailing slash (Express in non-strict mode and Starlette's redirect
/// treat `/v1/refunds/` as `/v1/refunds`), and with the escapes of printable ASCII characters
/// other than `/`, `\` and `%` decoded. The proxy's normal form keeps the escapes of reserved
/// characters (`%3A`, `%40`), which Starlette, Werkzeug, Django and Go route on decoded while
/// Express routes on them as written: a rule's `/v1/jobs/*:cancel` or `/v1/users/@me` must
/// match both spellings. (In a rule's own path, an escaped `*` or `?` becomes a wildcard.)
pub fn exact_path(path: &str) -> Cow<'_, str> {
    let p = trim_slash(path);
    if !p.contains('%') {
        return Cow::Borrowed(p);
    }
    let b = p.as_bytes();
    // What the escape at `i` stands for, if it is one this form decodes.
    let escaped = |i: usize| {
        let digit = |j: usize| char::from(*b.get(j)?).to_digit(16);
        let c = (digit(i + 1)? * 16 + digit(i + 2)?) as u8;
        ((0x20..0x7f).contains(&c) && !matches!(c, b'/' | b'\\' | b'%')).then_some(c)
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i] == b'%').then(|| escaped(i)).flatten() {
            Some(c) => {
                out.push(c);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were decoded: the rest of the path is as it was.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| p.to_owned()))
}

/// `path` without its trailing slashes (`/` stays `/`).
pub fn trim_slash(path: &str) -> &str {
    if path.len() > 1 {
        let t = path.trim_end_matches('/');
        if t.is_empty() { "/" } else { t }
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_globs() {
        assert!(simple("*", ""));
        assert!(simple("search*", "search_web"));
        assert!(simple("s?arch", "search"));
        assert!(simple("*.sql", "dump.backup.sql"));
        assert!(!simple("*.sql", "dump.sqlx"));
        assert!(!simple("a*b*c", "aXbY"));
        assert!(simple(&"*a".repeat(20), &"a".repeat(40)));
        // A `*` in the text is just a character; a `*` in the pattern is always a wildcard.
        assert!(simple("SELECT *", "SELECT * FROM t"));
    }

    #[test]
    fn path_globs() {
        assert!(path("agents/refund-*", "agents/refund-7"));
        assert!(!path("agents/refund-*", "agents/refund-7/worker"));
        assert!(path("agents/**", "agents/a/b/c"));
        assert!(path("agents/**", "agents"));
        assert!(path("/v1/refunds/**", "/v1/refunds"));
        assert!(path("/v1/*/refunds", "/v1/ch_1/refunds"));
        assert!(!path("/v1/*/refunds", "/v1/a/b/refunds"));
        assert!(path("**/secret", "a/b/secret"));
        assert!(is_glob("a/*") && !is_glob("a/b"));
    }

    /// The shortcut for patterns without glob characters decides as the segment walk does.
    #[test]
    fn literal_paths_match_as_the_segment_walk_does() {
        let names = [
            "", "/", "a", "/a", "a/", "/a/", "a/b", "/a/b/", "a//b", "a/b/c", "ab", "a/bc", "b",
        ];
        for p in names {
            for t in names {
                assert_eq!(path(p, t), segments(p, t), "pattern {p:?} text {t:?}");
            }
        }
    }
}
