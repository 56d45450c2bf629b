//! `cargo xtask long-functions [LIMIT]`: functions longer than LIMIT lines (default 120) in
//! flashinfer-rs/src (`*.rs`, recursively) and flashinfer-sys/csrc (`*.c*`), longest first,
//! as `length path:line name`; exit 1 if any.
//!
//! Brace counting on lines (strings and comments are not parsed: good enough for this code
//! base's style, where a function's body opens on its signature's last line). The two line
//! matchers are these regular expressions (Python's `re.match`), written out by hand:
//!
//! - Rust: `^\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)`
//! - C/C++/CUDA: `^(?:[\w:<>,*&\s"]+?)\b(\w+)\s*\([^;]*$`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run(root: &Path, limit: usize) -> Result<ExitCode> {
    let mut found = Vec::new();
    let mut rust = Vec::new();
    walk_rs(&root.join("flashinfer-rs/src"), &mut rust)?;
    rust.sort();
    for p in rust {
        found.extend(scan(root, &p, rust_fn, limit)?);
    }
    let mut c = Vec::new();
    for e in std::fs::read_dir(root.join("flashinfer-sys/csrc")).context("flashinfer-sys/csrc")? {
        let p = e?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if p.is_file() && !name.starts_with('.') && name.contains(".c") {
            c.push(p);
        }
    }
    c.sort();
    for p in c {
        found.extend(scan(root, &p, c_fn, limit)?);
    }
    found.sort_by(|a, b| b.cmp(a));
    for (length, place, name) in &found {
        println!("{length:5} {place} {name}");
    }
    Ok(if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn walk_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let p = e?.path();
        if p.is_dir() {
            walk_rs(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

type Matcher = fn(&str) -> Option<&str>;

/// (length, `path:line`, name) of every function in `path` longer than `limit` lines.
fn scan(
    root: &Path,
    path: &Path,
    matcher: Matcher,
    limit: usize,
) -> Result<Vec<(usize, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    Ok(long_functions(&splitlines(&text), matcher, limit)
        .into_iter()
        .map(|(length, line, name)| (length, format!("{rel}:{line}"), name))
        .collect())
}

/// (length, 1-based first line, name) of the functions longer than `limit` lines.
fn long_functions(lines: &[&str], matcher: Matcher, limit: usize) -> Vec<(usize, usize, String)> {
    const SKIP: [&str; 6] = ["//", "#", "return", "if", "for", "while"];
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = matcher(line) else { continue };
        if SKIP.iter().any(|s| line.trim_start().starts_with(s)) {
            continue;
        }
        // The opening brace of the body (the signature may span lines).
        let Some(j) = (i..lines.len()).find(|&j| lines[j].contains('{') || lines[j].contains(';'))
        else {
            continue;
        };
        if !lines[j].contains('{') {
            continue; // a declaration
        }
        let mut depth = 0i64;
        let mut k = j;
        while k < lines.len() {
            depth += lines[k].matches('{').count() as i64 - lines[k].matches('}').count() as i64;
            if depth <= 0 {
                break;
            }
            k += 1;
        }
        let length = k - i + 1;
        if length > limit {
            out.push((length, i + 1, name.to_string()));
        }
    }
    out
}

/// Python's `str.splitlines()`: every line boundary it knows, none kept.
fn splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let boundary = matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if boundary {
            lines.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = chars.peek() {
                    chars.next();
                    end += 1;
                }
            }
            start = end;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Python's `\w` (str patterns): alphanumeric or `_`.
fn word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `\s` (str patterns).
fn space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn skip_space(s: &str) -> &str {
    s.trim_start_matches(space)
}

/// `\s+` then the rest, or None without at least one.
fn space1(s: &str) -> Option<&str> {
    let rest = skip_space(s);
    (rest.len() < s.len()).then_some(rest)
}

/// `\w+` at the start of `s`: (the word, the rest), or None.
fn word1(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c| !word(c)).unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// An optional `KEYWORD\s+` group: the rest after it, or `s` where it does not match. (No
/// backtracking is needed: each group starts with a keyword none of the later ones starts with.)
fn optional_keyword<'a>(s: &'a str, keyword: &str) -> &'a str {
    s.strip_prefix(keyword).and_then(space1).unwrap_or(s)
}

/// `^\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)`: the name.
fn rust_fn(line: &str) -> Option<&str> {
    let mut s = skip_space(line);
    if let Some(after) = s.strip_prefix("pub") {
        // `(crate)` etc.; if it does not close, the group is `pub` alone.
        let after = after
            .strip_prefix('(')
            .and_then(|a| {
                let end = a.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(a.len());
                (end > 0).then(|| &a[end..])
            })
            .and_then(|a| a.strip_prefix(')'))
            .unwrap_or(after);
        if let Some(after) = space1(after) {
            s = after;
        }
    }
    s = optional_keyword(s, "const");
    s = optional_keyword(s, "unsafe");
    if let Some(after) = s
        .strip_prefix("extern")
        .and_then(space1)
        .and_then(|a| a.strip_prefix("\"C\""))
        .and_then(space1)
    {
        s = after;
    }
    let s = space1(s.strip_prefix("fn")?)?;
    word1(s).map(|(name, _)| name)
}

/// `^(?:[\w:<>,*&\s"]+?)\b(\w+)\s*\([^;]*$`: the name. The lazy prefix is the shortest one
/// after which the rest matches; it ends on a non-word character (for `\b` before `\w+`).
fn c_fn(line: &str) -> Option<&str> {
    let prefix_char = |c: char| word(c) || space(c) || ":<>,*&\"".contains(c);
    for (i, c) in line.char_indices() {
        if !prefix_char(c) {
            return None;
        }
        if word(c) {
            continue; // no word boundary right after a word character
        }
        let rest = &line[i + c.len_utf8()..];
        let Some((name, after)) = word1(rest) else {
            continue;
        };
        if let Some(args) = skip_space(after).strip_prefix('(') {
            if !args.contains(';') {
                return Some(name);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_signatures() {
        assert_eq!(rust_fn("fn main() {"), Some("main"));
        assert_eq!(rust_fn("    pub fn route<'a>("), Some("route"));
        assert_eq!(rust_fn("pub(crate) const unsafe fn x()"), Some("x"));
        assert_eq!(
            rust_fn("  pub unsafe extern \"C\" fn cb(x: i32) {"),
            Some("cb")
        );
        assert_eq!(rust_fn("unsafe extern \"C\" fn cb()"), Some("cb"));
        assert_eq!(rust_fn("async fn f()"), None);
        assert_eq!(rust_fn("pub(in crate::x) fn f()"), None);
        assert_eq!(rust_fn("pub(crate)fn f()"), None);
        assert_eq!(rust_fn("pubfn f()"), None);
        assert_eq!(rust_fn("fn(u8) -> u8"), None);
        assert_eq!(rust_fn("let f = fn_ptr;"), None);
        assert_eq!(rust_fn("constant fn f()"), None);
        assert_eq!(rust_fn("pub extern fn f()"), None);
    }

    #[test]
    fn c_signatures() {
        assert_eq!(c_fn("int main(int argc, char** argv) {"), Some("main"));
        assert_eq!(
            c_fn("static fi_status fi_route(const fi_args* a,"),
            Some("fi_route")
        );
        assert_eq!(c_fn("extern \"C\" int fi_x(void) {"), Some("fi_x"));
        assert_eq!(c_fn("std::vector<int> ns::f (x)"), Some("f"));
        assert_eq!(c_fn("int f(void);"), None);
        assert_eq!(c_fn("f(x)"), None); // the prefix is not empty
        assert_eq!(c_fn("  return g(x)"), Some("g")); // skipped by the caller
        assert_eq!(c_fn("a = f(x)"), None);
        // The shortest prefix wins: the first name followed by `(`.
        assert_eq!(c_fn("int a b(c) d(e)"), Some("b"));
        // `(` ends the prefix: a later name cannot be reached.
        assert_eq!(c_fn("int a(c; d(e)"), None);
    }

    #[test]
    fn python_splitlines() {
        assert_eq!(
            splitlines("a\nb\r\nc\rd\u{2028}e\n"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(splitlines("a\n\nb"), ["a", "", "b"]);
        assert!(splitlines("").is_empty());
    }

    #[test]
    fn brace_counting() {
        let src = "fn short() {\n}\n\nfn long(\n    x: u8,\n) {\n    a;\n    b;\n}\nfn decl();\nfn open() {\n  x\n";
        let lines = splitlines(src);
        assert_eq!(
            long_functions(&lines, rust_fn, 2),
            [(6, 4, "long".to_string()), (3, 11, "open".to_string())]
        );
        assert_eq!(long_functions(&lines, rust_fn, 6), []);
        // Commented-out and `#`-prefixed lines are no functions.
        assert_eq!(long_functions(&["// fn a() {", "", "}"], rust_fn, 0), []);
    }
}
