//! Fluentd's configuration syntax, read into a tree of directives.
//!
//! What it reads: `<name argument>` … `</name>` sections, `key value` parameters (values bare,
//! `"double"` or `'single'` quoted, or JSON arrays/objects that may span lines), `#` comments
//! outside quotes, and `@include` of a file or glob relative to the including file.
//!
//! Guarantees: never panics on any input; every error names the file and the line.

use std::path::{Path, PathBuf};

/// A `<name argument>` section with its parameters and nested sections, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub argument: String,
    pub params: Vec<Param>,
    pub children: Vec<Directive>,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: String,
    pub location: Location,
}

/// Where something was written: file and 1-based line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

/// `@include` deeper than this is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

impl Directive {
    /// The last value given for `key` (Fluentd lets a later line override an earlier one).
    pub fn param(&self, key: &str) -> Option<&Param> {
        self.params.iter().rev().find(|param| param.key == key)
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.param(key).map(|param| param.value.as_str())
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Directive> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }
}

/// Reads a configuration file and everything it includes. The result is a root directive whose
/// children are the file's top-level sections.
pub fn parse_file(path: &Path) -> Result<Directive, SyntaxError> {
    let mut root = Directive { location: Location { file: path.to_path_buf(), line: 0 }, ..Directive::default() };
    parse_into(path, &mut root, 0)?;
    Ok(root)
}

/// Parses configuration text as if read from `origin` (includes resolve next to it).
pub fn parse_text(text: &str, origin: &Path) -> Result<Directive, SyntaxError> {
    let mut root = Directive { location: Location { file: origin.to_path_buf(), line: 0 }, ..Directive::default() };
    parse_lines(text, origin, &mut root, 0)?;
    Ok(root)
}

fn parse_into(path: &Path, parent: &mut Directive, depth: usize) -> Result<(), SyntaxError> {
    let text = std::fs::read_to_string(path).map_err(|source| SyntaxError::Read { path: path.to_path_buf(), source })?;
    parse_lines(&text, path, parent, depth)
}

fn parse_lines(text: &str, origin: &Path, root: &mut Directive, depth: usize) -> Result<(), SyntaxError> {
    let at = |line: usize| Location { file: origin.to_path_buf(), line };
    let invalid = |line: usize, message: String| SyntaxError::Invalid { location: at(line), message };
    // Open sections, innermost last; the root is below them.
    let mut open: Vec<Directive> = Vec::new();
    let mut lines = text.lines().enumerate().map(|(index, line)| (index + 1, line));
    while let Some((number, raw)) = lines.next() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let parent = open.last_mut().unwrap_or(&mut *root);
        if let Some(rest) = line.strip_prefix("</") {
            let name = rest.strip_suffix('>').ok_or_else(|| invalid(number, format!("`{line}` is missing its closing `>`")))?.trim();
            let Some(closed) = open.pop() else {
                return Err(invalid(number, format!("`</{name}>` closes nothing")));
            };
            if closed.name != name {
                return Err(invalid(number, format!("`</{name}>` closes `<{}>` opened at line {}", closed.name, closed.location.line)));
            }
            open.last_mut().unwrap_or(&mut *root).children.push(closed);
        } else if let Some(rest) = line.strip_prefix('<') {
            let inner = rest.strip_suffix('>').ok_or_else(|| invalid(number, format!("`{line}` is missing its closing `>`")))?;
            let (name, argument) = inner.trim().split_once(char::is_whitespace).unwrap_or((inner.trim(), ""));
            if name.is_empty() {
                return Err(invalid(number, "a section needs a name, as in `<source>`".into()));
            }
            open.push(Directive {
                name: name.to_owned(),
                argument: argument.trim().to_owned(),
                location: at(number),
                ..Directive::default()
            });
        } else {
            let (key, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let mut value = rest.trim().to_owned();
            // A JSON array or object may run over several lines until its brackets balance.
            while bracket_depth(&value) > 0 {
                let Some((_, next)) = lines.next() else {
                    return Err(invalid(number, format!("the value of `{key}` opens a bracket that is never closed")));
                };
                value.push(' ');
                value.push_str(next.trim());
            }
            let value = unquote(&value).map_err(|message| invalid(number, format!("`{key}`: {message}")))?;
            if key == "@include" {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(invalid(number, format!("@include nested deeper than {MAX_INCLUDE_DEPTH}: is a file including itself?")));
                }
                include(&value, origin, parent, depth + 1).map_err(|error| match error {
                    SyntaxError::Read { path, source } => invalid(number, format!("@include {}: {source}", path.display())),
                    other => other,
                })?;
                continue;
            }
            parent.params.push(Param { key: key.to_owned(), value, location: at(number) });
        }
    }
    if let Some(unclosed) = open.last() {
        return Err(invalid(unclosed.location.line, format!("`<{}>` is never closed", unclosed.name)));
    }
    Ok(())
}

/// Parses the files `pattern` names (a path or glob, relative to `origin`'s folder) into `parent`.
fn include(pattern: &str, origin: &Path, parent: &mut Directive, depth: usize) -> Result<(), SyntaxError> {
    let base = origin.parent().unwrap_or_else(|| Path::new("."));
    let pattern = if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { base.join(pattern) };
    let text = pattern.to_string_lossy().into_owned();
    let mut paths: Vec<PathBuf> = match glob::glob(&text) {
        Ok(paths) => paths.filter_map(Result::ok).collect(),
        Err(_) => vec![pattern.clone()],
    };
    if paths.is_empty() && !text.contains(['*', '?', '[']) {
        paths.push(pattern);
    }
    // Fluentd includes matches in alphabetical order.
    paths.sort();
    for path in paths {
        parse_into(&path, parent, depth)?;
    }
    Ok(())
}

/// The line without a `#` comment; a `#` inside quotes is kept.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (index, character) in line.char_indices() {
        match (quote, character) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(open), found) if found == open && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(character),
            (None, '#') => return &line[..index],
            _ => {}
        }
        escaped = false;
    }
    line
}

/// How many more `[`/`{` than `]`/`}` a value holds, outside quoted strings.
fn bracket_depth(value: &str) -> i64 {
    if !value.starts_with(['[', '{']) {
        return 0;
    }
    let mut depth = 0i64;
    let mut in_string = false;
    let mut escaped = false;
    for character in value.chars() {
        match character {
            '\\' if in_string && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_string = !in_string,
            '[' | '{' if !in_string => depth += 1,
            ']' | '}' if !in_string => depth -= 1,
            _ => {}
        }
        escaped = false;
    }
    depth
}

/// The value without its quotes; double-quoted values take `\"`, `\\`, `\n` and `\t` escapes.
fn unquote(value: &str) -> Result<String, String> {
    let Some(first) = value.chars().next() else { return Ok(String::new()) };
    if first != '"' && first != '\'' {
        return Ok(value.to_owned());
    }
    let body = &value[1..];
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(character) = chars.next() {
        match character {
            '\\' if first == '"' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => return Err("a quoted value ends in a lone backslash".into()),
            },
            found if found == first => {
                let rest = chars.as_str().trim();
                if !rest.is_empty() {
                    return Err(format!("unexpected `{rest}` after the quoted value"));
                }
                return Ok(out);
            }
            other => out.push(other),
        }
    }
    Err(format!("the quote {first} is never closed"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;

    /// The seed's configuration, as published (paths included).
    const SEED: &str = "<source>\n  @type tail\n  path /Users/st/test/conect_data_poc/source/*.log\n  pos_file /Users/st/test/conect_data_poc/pos/pos_file.pos\n  tag kinesis.test\n  <parse>\n    @type json\n  </parse>\n  refresh_interval 5s\n</source>\n\n\n<match kinesis.*>\n  @type kinesis_firehose\n  region ap-northeast-2\n  delivery_stream_name test-fluentd-firehose\n  <buffer tag>\n    flush_mode interval\n    flush_interval 1s\n  </buffer>\n</match>\n";

    #[test]
    fn the_seed_configuration_reads_into_sections_parameters_and_lines() {
        let root = parse_text(SEED, Path::new("kinesis_test.config")).expect("parses");
        let source = &root.children[0];
        assert_eq!((source.name.as_str(), source.location.line), ("source", 1));
        assert_eq!(source.value("@type"), Some("tail"));
        assert_eq!(source.value("tag"), Some("kinesis.test"));
        assert_eq!(source.children[0].value("@type"), Some("json"));
        let matched = &root.children[1];
        assert_eq!((matched.name.as_str(), matched.argument.as_str(), matched.location.line), ("match", "kinesis.*", 13));
        let buffer = &matched.children[0];
        assert_eq!((buffer.argument.as_str(), buffer.value("flush_interval")), ("tag", Some("1s")));
        assert_eq!(buffer.param("flush_interval").map(|param| param.location.line), Some(19));
    }

    #[test]
    fn comments_quotes_and_multi_line_arrays_are_read_as_fluentd_reads_them() {
        let text = "<source> # the input\n  path \"/var/log/a#b.log\" # a comment\n  exclude_path [\"/x/*.gz\",\n    \"/y/*.zip\"]\n  tag 'a.b'\n</source>\n";
        let root = parse_text(text, Path::new("t.conf")).expect("parses");
        let source = &root.children[0];
        assert_eq!(source.value("path"), Some("/var/log/a#b.log"));
        assert_eq!(source.value("exclude_path"), Some("[\"/x/*.gz\", \"/y/*.zip\"]"));
        assert_eq!(source.value("tag"), Some("a.b"));
    }

    #[test]
    fn includes_are_read_relative_to_the_including_file_in_alphabetical_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
        std::fs::write(dir.path().join("conf.d/b.conf"), "<match b.**>\n  @type null\n</match>\n").expect("write");
        std::fs::write(dir.path().join("conf.d/a.conf"), "<match a.**>\n  @type null\n</match>\n").expect("write");
        std::fs::write(dir.path().join("main.conf"), "@include conf.d/*.conf\n").expect("write");
        let root = parse_file(&dir.path().join("main.conf")).expect("parses");
        let arguments: Vec<&str> = root.children.iter().map(|child| child.argument.as_str()).collect();
        assert_eq!(arguments, vec!["a.**", "b.**"]);
        assert!(root.children[1].location.file.ends_with("conf.d/b.conf"));
    }

    #[test]
    fn a_file_that_includes_itself_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("loop.conf"), "@include loop.conf\n").expect("write");
        let error = parse_file(&dir.path().join("loop.conf")).expect_err("a loop");
        assert!(error.to_string().contains("deeper than"), "{error}");
    }

    #[test]
    fn unbalanced_sections_are_errors_with_their_line() {
        for (text, line, words) in [
            ("<source>\n  @type tail\n", 1, "never closed"),
            ("<source>\n</match>\n", 2, "closes `<source>`"),
            ("</source>\n", 1, "closes nothing"),
            ("<source\n</source>\n", 1, "closing `>`"),
            ("<match a>\n  tag \"open\n</match>\n", 2, "never closed"),
        ] {
            let error = parse_text(text, Path::new("t.conf")).expect_err(text).to_string();
            assert!(error.contains(&format!("t.conf:{line}:")) && error.contains(words), "{text:?}: {error}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn any_text_parses_or_fails_with_a_line_never_panics(text in "[<>/a-z @#\"'\\[\\]{}\\\\\n\t.*]{0,200}") {
            match parse_text(&text, Path::new("fuzz.conf")) {
                Ok(_) => {}
                Err(SyntaxError::Invalid { location, .. }) => prop_assert!(location.line >= 1 && location.line <= text.lines().count().max(1)),
                Err(SyntaxError::Read { .. }) => {}
            }
        }
    }
}
