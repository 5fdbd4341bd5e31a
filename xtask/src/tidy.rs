//! Tidy checks of the source tree that run under `cargo test` (`cargo test -p xtask`): every
//! source file says what it is, the sans-IO core stays sans-IO, and every reference to a section
//! of the documentation resolves to a heading that exists.

use std::path::{Path, PathBuf};

/// Directories never walked: build output, VCS data, fuzzing corpora and artifacts.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "corpus", "artifacts", "node_modules"];

/// What `callplus-session/src` must not contain: the core reads no clock, does no I/O and runs
/// no threads or runtime; its drivers do all of that and pass the time in.
const CORE_FORBIDDEN: &[&str] =
    &["Instant::now", "SystemTime", "std::net", "std::fs", "std::thread", "tokio"];

/// The product specification is not in the repository; code and docs point at sections of
/// `docs/protocol.md` instead of its paragraph numbers.
/// (Spelt in two parts so that this file does not cite one itself.)
const SPEC_SECTION: &str = concat!("SPEC ", "§");

/// Files that still cite the specification by paragraph, being reworked on another branch;
/// an entry must be removed once its file no longer does (the test says so).
const SPEC_SECTION_ALLOWED: &[&str] = &[];

/// Every file under `dir` (recursively) whose name ends with one of `extensions`, as paths
/// relative to `root`, sorted.
pub(crate) fn files(root: &Path, dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if extensions.iter().any(|ext| name.ends_with(&format!(".{ext}"))) {
                out.push(path.strip_prefix(root).map_or_else(|_| path.clone(), Path::to_path_buf));
            }
        }
    }
    out.sort();
    out
}

/// The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to `-`.
pub(crate) fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown text (outside code blocks).
pub(crate) fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// The `(file, anchor)` references of a text: `docs/<name>.md#<anchor>` anywhere (relative to the
/// workspace root), and, in Markdown (`markdown_dir` given), links `](<name>.md#<anchor>)` relative
/// to the file's directory and `](#anchor)` into the file itself (`file` empty).
pub(crate) fn doc_references(text: &str, markdown_dir: Option<&Path>) -> Vec<(PathBuf, String)> {
    let anchor_end =
        |s: &str| s.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')).unwrap_or(s.len());
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("docs/") {
        let after = &rest[i + "docs/".len()..];
        let name_len =
            after.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')).unwrap_or(after.len());
        let preceded_by_path = rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '_');
        if !preceded_by_path && let Some(tail) = after[name_len..].strip_prefix(".md#") {
            let anchor = &tail[..anchor_end(tail)];
            out.push((PathBuf::from(format!("docs/{}.md", &after[..name_len])), anchor.to_owned()));
        }
        rest = after;
    }
    if let Some(dir) = markdown_dir {
        let mut rest = text;
        while let Some(i) = rest.find("](") {
            let target = &rest[i + 2..];
            let target = &target[..target.find(')').unwrap_or(target.len())];
            if let Some((file, anchor)) = target.split_once('#')
                && !file.contains("://")
                && (file.is_empty() || file.ends_with(".md"))
            {
                let file = if file.is_empty() { PathBuf::new() } else { dir.join(file) };
                out.push((file, anchor.to_owned()));
            }
            rest = &rest[i + 2..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::root()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn every_source_file_opens_with_a_module_doc_line() {
        let sources = files(&root(), Path::new(""), &["rs"]);
        assert!(sources.len() > 50, "the walk found only {} files", sources.len());
        let missing: Vec<String> = sources
            .iter()
            .filter(|path| !read(path).starts_with("//!"))
            .map(|path| path.display().to_string())
            .collect();
        assert!(missing.is_empty(), "files that do not open with a `//!` line:\n{}", missing.join("\n"));
    }

    /// A merge that commits its conflict markers can still build (in a comment, a JS file the
    /// Rust build never reads); this finds them before a browser or a reader does.
    #[test]
    fn no_file_holds_merge_conflict_markers() {
        let exts = ["rs", "md", "proto", "js", "mjs", "html", "css", "toml", "sql", "h", "c", "sh", "yml"];
        let texts = files(&root(), Path::new(""), &exts);
        assert!(texts.len() > 50, "the walk found only {} files", texts.len());
        // Spelt in two parts so that this file does not hold one itself.
        let markers = [concat!("<<<<<", "<< "), concat!(">>>>>", ">> ")];
        let found: Vec<String> = texts
            .iter()
            .filter_map(|path| {
                let text = std::fs::read_to_string(root().join(path)).ok()?;
                let line = text.lines().position(|l| markers.iter().any(|m| l.starts_with(m)))?;
                Some(format!("{}:{}", path.display(), line + 1))
            })
            .collect();
        assert!(found.is_empty(), "merge conflict markers left in: {found:?}");
    }

    #[test]
    fn the_core_reads_no_clock_and_does_no_io() {
        let core = files(&root(), Path::new("callplus-session/src"), &["rs"]);
        assert!(!core.is_empty());
        let mut found = Vec::new();
        for path in &core {
            for (n, line) in read(path).lines().enumerate() {
                for word in CORE_FORBIDDEN.iter().filter(|w| line.contains(*w)) {
                    found.push(format!("{}:{}: {word}", path.display(), n + 1));
                }
            }
        }
        assert!(found.is_empty(), "callplus-session must stay sans-IO:\n{}", found.join("\n"));
    }

    #[test]
    fn documentation_references_resolve() {
        let root = root();
        let mut texts = files(&root, Path::new(""), &["rs", "md", "proto"]);
        texts.retain(|p| !p.starts_with("fuzz/corpus"));
        let mut broken = Vec::new();
        let mut cited = Vec::new();
        let mut checked = 0;
        for path in &texts {
            let text = read(path);
            let shown = path.display().to_string();
            if text.contains(SPEC_SECTION) {
                if SPEC_SECTION_ALLOWED.contains(&shown.as_str()) {
                    continue;
                }
                cited.push(shown.clone());
            }
            let markdown_dir =
                path.extension().is_some_and(|e| e == "md").then(|| path.parent().unwrap_or(Path::new("")));
            for (file, anchor) in doc_references(&text, markdown_dir) {
                let file = if file.as_os_str().is_empty() { path.clone() } else { file };
                checked += 1;
                let target = std::fs::read_to_string(root.join(&file)).unwrap_or_default();
                if !anchors(&target).contains(&anchor) {
                    broken.push(format!("{shown}: {}#{anchor}", file.display()));
                }
            }
        }
        assert!(checked > 10, "only {checked} references were found");
        assert!(
            cited.is_empty(),
            "files citing the specification by paragraph (`{SPEC_SECTION}`); point at a section of \
             docs/protocol.md instead:\n{}",
            cited.join("\n")
        );
        assert!(broken.is_empty(), "references to headings that do not exist:\n{}", broken.join("\n"));
        let stale: Vec<&&str> =
            SPEC_SECTION_ALLOWED.iter().filter(|f| !read(Path::new(f)).contains(SPEC_SECTION)).collect();
        assert!(
            stale.is_empty(),
            "remove these from SPEC_SECTION_ALLOWED, they cite no paragraph any more: {stale:?}"
        );
    }

    #[test]
    fn references_are_found_and_slugs_are_githubs() {
        assert_eq!(slug(" Rules where SPEC is silent"), "rules-where-spec-is-silent");
        assert_eq!(slug("Reliable frames: seq, ack, resume"), "reliable-frames-seq-ack-resume");
        let refs = doc_references(
            "see docs/protocol.md#result-codes, [x](operations.md#tls) and [y](#events); \
             callplus-ffi/docs/x.md#no is not ours; [z](https://e.org/a.md#q) neither",
            Some(Path::new("docs")),
        );
        assert_eq!(
            refs,
            vec![
                (PathBuf::from("docs/protocol.md"), "result-codes".to_owned()),
                (PathBuf::from("docs/operations.md"), "tls".to_owned()),
                (PathBuf::new(), "events".to_owned()),
            ]
        );
        assert_eq!(anchors("# A b\n```\n# not a heading\n```\n## C: d\n"), vec!["a-b", "c-d"]);
    }
}
