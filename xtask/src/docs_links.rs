//! The documentation's links: every relative link and `#anchor` in README.md and docs/*.md must
//! resolve (the file or directory exists; the anchor is a heading of the target, spelled as
//! GitHub spells heading anchors), and the README stays short enough to read.
//!
//! Markdown is parsed with pulldown-cmark, so links inside code spans and fenced blocks are not
//! links, and headings are what a renderer sees (`# comment` lines in a shell block are not).

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::path::{Path, PathBuf};

    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

    /// The README is a user's manual, read in ten minutes; the reference is in docs/.
    const README_MAX_BYTES: usize = 30 * 1024;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned()
    }

    fn options() -> Options {
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
    }

    /// GitHub's anchor for a heading's text: lowercased; letters, digits, `_`, `-` kept; each
    /// space becomes `-`; everything else dropped. Repeats get `-1`, `-2`, ... (see `anchors`).
    fn slug(text: &str) -> String {
        text.trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c),
                _ => None,
            })
            .collect()
    }

    /// The anchors of a markdown document's headings.
    fn anchors(markdown: &str) -> BTreeSet<String> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = BTreeSet::new();
        let mut heading: Option<String> = None;
        for event in Parser::new_ext(markdown, options()) {
            match event {
                Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
                Event::End(TagEnd::Heading(_)) => {
                    let base = slug(&heading.take().unwrap_or_default());
                    let n = seen.entry(base.clone()).or_insert(0);
                    out.insert(if *n == 0 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    });
                    *n += 1;
                }
                Event::Text(t) | Event::Code(t) => {
                    if let Some(h) = heading.as_mut() {
                        h.push_str(&t);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The link and image destinations of a markdown document.
    fn links(markdown: &str) -> Vec<String> {
        Parser::new_ext(markdown, options())
            .filter_map(|event| match event {
                Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                    Some(dest_url.to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// What is wrong with the links of `file` (text `markdown`), one line each.
    fn broken_links(file: &Path, markdown: &str) -> Vec<String> {
        let mut broken = Vec::new();
        for dest in links(markdown) {
            if dest.contains("://") || dest.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match dest.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (dest.as_str(), None),
            };
            if path.is_empty() {
                if let Some(anchor) = anchor
                    && !anchors(markdown).contains(anchor)
                {
                    broken.push(format!("{dest}: no heading here has the anchor #{anchor}"));
                }
                continue;
            }
            if path.starts_with('/') {
                broken.push(format!("{dest}: use a relative link"));
                continue;
            }
            let target = file.parent().unwrap().join(path);
            if !target.exists() {
                broken.push(format!("{dest}: {} does not exist", target.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_none_or(|e| e != "md") {
                broken.push(format!(
                    "{dest}: an anchor into a file that is not markdown"
                ));
                continue;
            }
            let text = std::fs::read_to_string(&target).unwrap();
            if !anchors(&text).contains(anchor) {
                broken.push(format!(
                    "{dest}: no heading of {} has the anchor #{anchor}",
                    target.display()
                ));
            }
        }
        broken
    }

    fn documents() -> Vec<PathBuf> {
        let root = root();
        let mut docs = vec![root.join("README.md")];
        let mut md: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        md.sort();
        docs.extend(md);
        docs
    }

    #[test]
    fn every_relative_link_and_anchor_in_the_docs_resolves() {
        let mut broken = Vec::new();
        let mut checked = 0;
        for file in documents() {
            let text = std::fs::read_to_string(&file).unwrap();
            checked += links(&text).len();
            for b in broken_links(&file, &text) {
                broken.push(format!("{}: {b}", file.display()));
            }
        }
        assert!(
            broken.is_empty(),
            "broken links:\n  {}",
            broken.join("\n  ")
        );
        assert!(checked >= 50, "only {checked} links found in the docs");
    }

    #[test]
    fn the_readme_stays_short() {
        let len = std::fs::metadata(root().join("README.md")).unwrap().len() as usize;
        assert!(
            len < README_MAX_BYTES,
            "README.md is {len} bytes, over {README_MAX_BYTES}: move reference material to docs/"
        );
    }

    /// CI runs exactly the README's test command.
    #[test]
    fn ci_runs_the_readmes_test_command() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
        assert!(
            readme.contains("\ncargo xtask test "),
            "README.md: no `cargo xtask test`"
        );
        assert!(
            ci.lines().any(|l| l.trim() == "exec cargo xtask test"),
            ".ci/run does not run `cargo xtask test`"
        );
    }

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(
            slug("Limits (read before production)"),
            "limits-read-before-production"
        );
        assert_eq!(
            slug("Following one agent live, at 3 a.m."),
            "following-one-agent-live-at-3-am"
        );
        assert_eq!(
            slug("The proxy redirect (via_proxy)"),
            "the-proxy-redirect-via_proxy"
        );
        assert_eq!(slug("Try it: two commands"), "try-it-two-commands");
        assert_eq!(slug("A  b"), "a--b");
        let doc = "# Top\n\n## Same\n\n## Same\n\n### `code` and *emphasis*\n\n```sh\n# not a heading\n```\n";
        let a = anchors(doc);
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            ["code-and-emphasis", "same", "same-1", "top"]
        );
    }

    #[test]
    fn broken_links_are_found() {
        let file = root().join("docs/example.md");
        let doc = "# Here\n\n[ok](#here) [no](#there) [file](policy.md) [gone](nope.md) \
                   [anchor](policy.md#no-such-heading) [web](https://example.com/x#y) \
                   `[code](nope.md)`\n";
        let broken = broken_links(&file, doc);
        assert_eq!(broken.len(), 3, "{broken:#?}");
        assert!(broken[0].starts_with("#there"));
        assert!(broken[1].starts_with("nope.md"));
        assert!(broken[2].starts_with("policy.md#no-such-heading"));
    }
}
