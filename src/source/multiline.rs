//! Records that span lines: a Java stack trace, a Python traceback, a Go panic is one record, as
//! the application wrote it, not one record per line.
//!
//! A [`Multiline`] rule tells, for each complete line, whether it continues the record in
//! progress, begins a record that later lines may continue, or is a record alone; the chunker
//! ([`super::LineChunker`]) holds the record in progress and files it whole.
//!
//! Invariants kept here and in the chunker:
//! - A record is the exact bytes of its lines in the file, the newlines between them included and
//!   the last one left out, as a one-line record is its line without its newline: a replay or a
//!   recovery from the source gives the same bytes as the first delivery.
//! - The record in progress starts where the chunker's open chunk ends: a chunk, and so a stored
//!   position, never ends inside a record.
//! - A record is never held forever: once its file has not grown for `flush_timeout`, the record
//!   in progress is complete (the lines that continue it later are a record of their own), and a
//!   file that can no longer grow (rotated away, deleted) ends its record.
//! - A record is never larger than `max_bytes` nor longer than `max_lines`: the line that would
//!   pass a limit begins the next record instead, and the split is counted
//!   (`tailhose_multiline_splits_total`) and logged. Memory stays bounded by `max_bytes`.
//!
//! Rules: `start` (a line that matches begins a record, the others continue it), `continuation`
//! (a line that matches continues the record before it, the others begin one), and the presets
//! `java`, `python` and `go`, small state machines after Fluent Bit's built-in multiline parsers
//! and Google's `fluent-plugin-detect-exceptions`: a record begins at a line that matches a rule
//! of the start state, and each following line continues it while it matches a rule of the state
//! the last line led to. Ordinary log lines are then records alone and wait for nothing.

use std::time::Duration;

use regex::bytes::Regex;

/// A record of several lines sent as one line (`[sources.NAME.single_line]`, the Kinesis
/// Agent's SINGLELINE): each line trimmed of the spaces and control characters at its ends, then
/// the lines joined by `separator`. Applied to what is queued; the record's identity stays its
/// bytes in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleLine {
    pub trim: bool,
    pub separator: Vec<u8>,
}

impl SingleLine {
    /// The record's lines as one line. As the agent splits (Java's `String.split`), empty lines
    /// at the record's end are left out.
    pub fn apply(&self, record: &[u8]) -> Vec<u8> {
        let mut lines: Vec<&[u8]> = record.split(|&byte| byte == b'\n').collect();
        while lines.len() > 1 && lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let mut joined = Vec::with_capacity(record.len());
        for (index, line) in lines.into_iter().enumerate() {
            if index > 0 {
                joined.extend_from_slice(&self.separator);
            }
            // Java's `trim()`: every character up to U+0020, which in UTF-8 are single bytes.
            let line = if self.trim { trim_spaces_and_controls(line) } else { line };
            joined.extend_from_slice(line);
        }
        joined
    }
}

fn trim_spaces_and_controls(line: &[u8]) -> &[u8] {
    let start = line.iter().position(|&byte| byte > b' ').unwrap_or(line.len());
    let end = line.iter().rposition(|&byte| byte > b' ').map_or(start, |last| last + 1);
    &line[start..end]
}

/// How the lines of a source are put together into records.
#[derive(Debug, Clone)]
pub struct Multiline {
    pub rule: MultilineRule,
    /// A record in progress is complete once its file has not grown for this long.
    pub flush_timeout: Duration,
    /// Most lines in one record.
    pub max_lines: u32,
    /// Most bytes in one record, its newlines included.
    pub max_bytes: u64,
}

/// Which lines begin a record and which continue one.
#[derive(Debug, Clone)]
pub enum MultilineRule {
    /// A line that matches begins a record; one that does not continues the record in progress.
    Start(Regex),
    /// A line that matches continues the record in progress; one that does not begins a record.
    Continuation(Regex),
    /// A preset's state machine.
    States(StateMachine),
    /// A container runtime's log lines: a line the runtime split (a partial line) is continued
    /// by the next, up to the line that ends the application's line.
    Partial(PartialLines),
}

/// How a container runtime marks a line it split (at 16 KiB) into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialLines {
    /// CRI (containerd, CRI-O): `TIME STREAM P|F MESSAGE`; `P` is a part, `F` the last one.
    Cri,
    /// Docker's json-file: `{"log":"…","stream":"…","time":"…"}`; a part's `log` does not end
    /// with a newline, the last one's does.
    Docker,
}

/// In a [`MultilineRule::Partial`] record: a part of stdout is open, the next stdout line
/// continues it.
const OPEN_STDOUT: usize = 0;
/// The last line ended the application's line: the record is complete.
const PARTS_DONE: usize = 1;
/// A part of stderr is open.
const OPEN_STDERR: usize = 2;

/// What one line of a container runtime's log is to the parts of an application's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A part that the next line of the same stream continues.
    Continued { stderr: bool },
    /// The last (or only) part of an application's line.
    Last { stderr: bool },
    /// Not a line the runtime writes: a record alone (its parser makes it a dead letter), so
    /// that it takes no valid part down with it.
    Foreign,
}

/// A CRI line's fields: `TIME STREAM TAG MESSAGE`, the tag `P` (a part) or `F` (the last),
/// possibly followed by `:`-separated flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub message: &'a str,
}

impl<'a> CriLine<'a> {
    /// `line`'s fields (a trailing `\r` left out), or `None` if the runtime did not write it.
    pub fn parse(line: &'a str) -> Option<CriLine<'a>> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut fields = line.splitn(4, ' ');
        let (time, stream, tag) = (fields.next()?, fields.next()?, fields.next()?);
        let partial = match tag.split(':').next()? {
            "P" => true,
            "F" => false,
            _ => return None,
        };
        (!time.is_empty() && matches!(stream, "stdout" | "stderr")).then_some(CriLine {
            time,
            stream,
            partial,
            message: fields.next().unwrap_or_default(),
        })
    }
}

/// A Docker json-file line: `{"log": "…", "stream": "stdout" | "stderr", "time": "…"}`.
#[derive(Debug, serde::Deserialize)]
pub struct DockerLine<'a> {
    #[serde(borrow)]
    pub log: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub stream: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub time: std::borrow::Cow<'a, str>,
}

impl<'a> DockerLine<'a> {
    pub fn parse(line: &'a str) -> Option<DockerLine<'a>> {
        serde_json::from_str::<DockerLine<'_>>(line).ok().filter(|line| matches!(line.stream.as_ref(), "stdout" | "stderr"))
    }
}

impl PartialLines {
    fn part(self, line: &[u8]) -> Part {
        let Ok(line) = std::str::from_utf8(line) else { return Part::Foreign };
        let (partial, stderr) = match self {
            PartialLines::Cri => match CriLine::parse(line) {
                Some(cri) => (cri.partial, cri.stream == "stderr"),
                None => return Part::Foreign,
            },
            PartialLines::Docker => match DockerLine::parse(line) {
                Some(docker) => (!docker.log.ends_with('\n'), docker.stream == "stderr"),
                None => return Part::Foreign,
            },
        };
        if partial {
            Part::Continued { stderr }
        } else {
            Part::Last { stderr }
        }
    }
}

/// The state of a record whose part of this stream is open.
fn open(stderr: bool) -> usize {
    if stderr {
        OPEN_STDERR
    } else {
        OPEN_STDOUT
    }
}

/// What a line is to the record in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRole {
    /// Part of the record in progress, which is now in `state`.
    Continues { state: usize },
    /// The first line of a record that later lines may continue, in `state`.
    Begins { state: usize },
    /// A record by itself: nothing continues it.
    Alone,
}

impl MultilineRule {
    /// What `line` (without its newline) is, given the state of the record in progress, if any.
    pub fn classify(&self, line: &[u8], in_progress: Option<usize>) -> LineRole {
        match self {
            MultilineRule::Start(start) => match in_progress {
                Some(state) if !start.is_match(line) => LineRole::Continues { state },
                // Lines before the first start line are a record too: nothing is dropped.
                _ => LineRole::Begins { state: 0 },
            },
            MultilineRule::Continuation(continuation) => match in_progress {
                Some(state) if continuation.is_match(line) => LineRole::Continues { state },
                _ => LineRole::Begins { state: 0 },
            },
            MultilineRule::States(machine) => machine.classify(line, in_progress),
            // A part continues only the open part of its own stream: the runtime writes stdout
            // and stderr into one file, and a line of the other stream ends what was open.
            MultilineRule::Partial(kind) => match kind.part(line) {
                Part::Continued { stderr } if in_progress == Some(open(stderr)) => LineRole::Continues { state: open(stderr) },
                Part::Continued { stderr } => LineRole::Begins { state: open(stderr) },
                Part::Last { stderr } if in_progress == Some(open(stderr)) => LineRole::Continues { state: PARTS_DONE },
                Part::Last { .. } | Part::Foreign => LineRole::Alone,
            },
        }
    }

    /// Whether a record in `state` can take no further line: it is complete at once.
    pub fn is_complete(&self, state: usize) -> bool {
        match self {
            MultilineRule::States(machine) => machine.states.get(state).is_none_or(Vec::is_empty),
            MultilineRule::Partial(_) => state == PARTS_DONE,
            MultilineRule::Start(_) | MultilineRule::Continuation(_) => false,
        }
    }

    /// The preset named `name`, if there is one.
    pub fn preset(name: &str) -> Option<MultilineRule> {
        let table = match name {
            "java" => JAVA,
            "python" => PYTHON,
            "go" => GO,
            _ => return None,
        };
        StateMachine::from_table(table).ok().map(MultilineRule::States)
    }
}

/// The presets' names, for configuration errors and docs.
pub const PRESETS: [&str; 3] = ["java", "python", "go"];

/// States by index, 0 the start state; each holds its rules in order: a pattern and the state a
/// line that matches it leads to.
#[derive(Debug, Clone)]
pub struct StateMachine {
    states: Vec<Vec<(Regex, usize)>>,
}

/// A preset's rules as text: (state, pattern, next state). `start` is the start state.
type RuleTable = &'static [(&'static str, &'static str, &'static str)];

impl StateMachine {
    fn from_table(table: RuleTable) -> Result<StateMachine, regex::Error> {
        let mut names: Vec<&str> = vec!["start"];
        let index_of = |name: &'static str, names: &mut Vec<&'static str>| match names.iter().position(|known| *known == name) {
            Some(index) => index,
            None => {
                names.push(name);
                names.len() - 1
            }
        };
        let mut rules: Vec<(usize, Regex, usize)> = Vec::with_capacity(table.len());
        for &(state, pattern, next) in table {
            let (state, next) = (index_of(state, &mut names), index_of(next, &mut names));
            rules.push((state, Regex::new(pattern)?, next));
        }
        let mut states = vec![Vec::new(); names.len()];
        for (state, pattern, next) in rules {
            states[state].push((pattern, next));
        }
        Ok(StateMachine { states })
    }

    fn classify(&self, line: &[u8], in_progress: Option<usize>) -> LineRole {
        let next_from = |state: usize| self.states.get(state)?.iter().find(|(pattern, _)| pattern.is_match(line)).map(|&(_, next)| next);
        if let Some(next) = in_progress.and_then(next_from) {
            return LineRole::Continues { state: next };
        }
        match next_from(0) {
            Some(state) => LineRole::Begins { state },
            None => LineRole::Alone,
        }
    }
}

/// Java (and the JVM's languages, .NET's `--- End of` lines): the line naming the exception, then
/// `at` frames, `Caused by:` / `Suppressed:` chains and `... N more`.
const JAVA: RuleTable = &[
    ("start", r"(?:Exception|Error|Throwable|V8 errors stack trace)[:\r\n]|(?:Exception|Error|Throwable)$", "java_after_exception"),
    ("java_after_exception", r"^[\t ]*nested exception is:[\t ]*", "java_after_exception"),
    ("java_after_exception", r"^[\t ]+(?:eval )?at ", "java"),
    ("java_after_exception", r"^[\t ]*(?:Caused by|Suppressed):", "java_after_exception"),
    ("java_after_exception", r"^[\t ]*\.\.\. \d+ (?:more|common frames omitted)", "java"),
    ("java", r"^[\t ]+(?:eval )?at ", "java"),
    ("java", r"^[\t ]+--- End of inner exception stack trace ---$", "java"),
    ("java", r"^--- End of stack trace from previous location where exception was thrown ---$", "java"),
    ("java", r"^[\t ]*(?:Caused by|Suppressed):", "java_after_exception"),
    ("java", r"^[\t ]*\.\.\. \d+ (?:more|common frames omitted)", "java"),
];

/// Python: `Traceback (most recent call last):`, `File` lines each followed by its code line,
/// and the exception's line, which ends the record.
const PYTHON: RuleTable = &[
    ("start", r"^Traceback \(most recent call last\):$", "python"),
    ("python", r"^[\t ]+File ", "python_code"),
    ("python_code", r"^[\t ]+File ", "python_code"),
    ("python_code", r"^[\t ]+[^\t ]", "python"),
    ("python", r"^(?:[^\s.():]+\.)*[^\s.():]+(?::|$)", "python_done"),
    ("python_code", r"^(?:[^\s.():]+\.)*[^\s.():]+(?::|$)", "python_done"),
];

/// Go: `panic:` (or `http: panic serving`), the signal line, then each goroutine's header and its
/// frames in pairs (the function, then its file and line, indented), blank lines between
/// goroutines.
const GO: RuleTable = &[
    ("start", r"\bpanic: ", "go_after_panic"),
    ("start", r"http: panic serving", "go_goroutine"),
    ("go_after_panic", r"^$", "go_goroutine"),
    ("go_after_panic", r"^\[signal ", "go_after_signal"),
    ("go_after_signal", r"^$", "go_goroutine"),
    ("go_goroutine", r"^goroutine \d+ \[[^\]]+\]:$", "go_frame_1"),
    ("go_frame_1", r"^(?:[^\s.:]+\.)*[^\s.():]+\(|^created by ", "go_frame_2"),
    ("go_frame_1", r"^$", "go_goroutine"),
    ("go_frame_2", r"^\s", "go_frame_1"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_runtimes_parts_continue_until_the_line_that_ends_them() {
        let cri = MultilineRule::Partial(PartialLines::Cri);
        let lines = [
            "2026-12-01T12:00:00.1Z stdout P first ",
            "2026-12-01T12:00:00.2Z stdout P and ",
            "2026-12-01T12:00:00.3Z stdout F last",
            "2026-12-01T12:00:01Z stderr F alone",
            "not cri at all",
        ];
        let roles: Vec<LineRole> = {
            let mut state = None;
            lines
                .iter()
                .map(|line| {
                    let role = cri.classify(line.as_bytes(), state);
                    state = match role {
                        LineRole::Continues { state } | LineRole::Begins { state } if !cri.is_complete(state) => Some(state),
                        _ => None,
                    };
                    role
                })
                .collect()
        };
        assert_eq!(
            roles,
            [
                LineRole::Begins { state: OPEN_STDOUT },
                LineRole::Continues { state: OPEN_STDOUT },
                LineRole::Continues { state: PARTS_DONE },
                LineRole::Alone,
                LineRole::Alone
            ]
        );
        // A line of the other stream, or one the runtime did not write, continues no part.
        assert_eq!(cri.classify(b"T stderr F oops", Some(OPEN_STDOUT)), LineRole::Alone);
        assert_eq!(cri.classify(b"T stderr P half", Some(OPEN_STDOUT)), LineRole::Begins { state: OPEN_STDERR });
        assert_eq!(cri.classify(b"garbage", Some(OPEN_STDOUT)), LineRole::Alone);
        assert_eq!(cri.classify(b"T stdout P:x part\r", Some(OPEN_STDOUT)), LineRole::Continues { state: OPEN_STDOUT });
        let docker = PartialLines::Docker;
        assert_eq!(docker.part(br#"{"log":"part of a long line","stream":"stdout","time":"T"}"#), Part::Continued { stderr: false });
        assert_eq!(docker.part(br#"{"log":"the end\n","stream":"stderr","time":"T"}"#), Part::Last { stderr: true });
        for foreign in [&b"{broken"[..], br#"{"log":"no stream or time"}"#, br#"{"log":"x","stream":"stdin","time":"T"}"#] {
            assert_eq!(docker.part(foreign), Part::Foreign);
        }
    }

    /// The records `rule` makes of `text`'s lines: lines joined with `\n`, no limits.
    fn records(rule: &MultilineRule, text: &str) -> Vec<String> {
        let mut records: Vec<String> = Vec::new();
        let mut in_progress: Option<(String, usize)> = None;
        for line in text.lines() {
            match rule.classify(line.as_bytes(), in_progress.as_ref().map(|(_, state)| *state)) {
                LineRole::Continues { state } => {
                    let (record, at) = in_progress.as_mut().expect("continues a record in progress");
                    record.push('\n');
                    record.push_str(line);
                    *at = state;
                }
                LineRole::Begins { state } => {
                    records.extend(in_progress.take().map(|(record, _)| record));
                    in_progress = Some((line.to_owned(), state));
                }
                LineRole::Alone => {
                    records.extend(in_progress.take().map(|(record, _)| record));
                    records.push(line.to_owned());
                }
            }
            if in_progress.as_ref().is_some_and(|(_, state)| rule.is_complete(*state)) {
                records.extend(in_progress.take().map(|(record, _)| record));
            }
        }
        records.extend(in_progress.map(|(record, _)| record));
        records
    }

    fn preset(name: &str) -> MultilineRule {
        MultilineRule::preset(name).expect("a preset")
    }

    #[test]
    fn every_preset_compiles() {
        for name in PRESETS {
            assert!(MultilineRule::preset(name).is_some(), "{name}");
        }
        assert!(MultilineRule::preset("cobol").is_none());
    }

    #[test]
    fn a_java_stack_trace_with_its_causes_is_one_record_between_ordinary_lines() {
        let trace = "java.lang.IllegalStateException: boom\n\tat com.example.Orders.place(Orders.java:42)\n\tat com.example.Api.handle(Api.java:7)\nCaused by: java.io.IOException: disk full\n\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:354)\n\t... 2 more";
        let text = format!("2026-12-01 12:00:00 INFO started\n{trace}\n2026-12-01 12:00:01 INFO next\n");
        assert_eq!(records(&preset("java"), &text), ["2026-12-01 12:00:00 INFO started", trace, "2026-12-01 12:00:01 INFO next"]);
    }

    #[test]
    fn a_python_traceback_ends_with_its_exception_line() {
        let trace = "Traceback (most recent call last):\n  File \"/app/main.py\", line 3, in <module>\n    main()\n  File \"/app/main.py\", line 2, in main\n    raise ValueError(\"bad\")\nValueError: bad";
        let text = format!("{trace}\nINFO after\n");
        assert_eq!(records(&preset("python"), &text), [trace, "INFO after"]);
    }

    #[test]
    fn a_go_panic_with_its_goroutines_is_one_record() {
        let trace = "panic: runtime error: index out of range [3] with length 3\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:8 +0x1d\nexit status 2";
        // "exit status 2" is not a frame: it is a record of its own.
        let text = format!("level=info msg=start\n{trace}\n");
        assert_eq!(
            records(&preset("go"), &text),
            ["level=info msg=start", &trace[..trace.len() - "\nexit status 2".len()], "exit status 2"]
        );
    }

    #[test]
    fn with_a_start_pattern_lines_before_the_first_start_are_a_record_too() {
        let rule = MultilineRule::Start(Regex::new(r"^\d{4}-").expect("pattern"));
        let text = "orphan\n  more\n2026-01-01 a\n  b\n2026-01-02 c\n";
        assert_eq!(records(&rule, text), ["orphan\n  more", "2026-01-01 a\n  b", "2026-01-02 c"]);
    }

    #[test]
    fn with_a_continuation_pattern_matching_lines_join_the_one_before() {
        let rule = MultilineRule::Continuation(Regex::new(r"^\s").expect("pattern"));
        let text = " lead\nfirst\n  second\n\tthird\nfourth\n";
        assert_eq!(records(&rule, text), [" lead", "first\n  second\n\tthird", "fourth"]);
    }
}
