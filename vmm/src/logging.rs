//! The VMM's log: where it goes (`--log-file`, else standard error), in which format
//! (`--log-format text|json`), filtered by `RUST_LOG` (default `warn`).
//!
//! A hotplug transaction's lines are in its span, `tx{id=N kind=...}`: the text format
//! prefixes them with it, the JSON format carries it as `span` (and `spans`), so that a
//! transaction's lines can be picked out of a busy log.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `--log-format`: how each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event: time, level, spans, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format): `timestamp`, `level`,
    /// `fields` (with `message`), `target`, `span` and `spans`.
    Json,
}

/// Where and how the VMM logs: `--log-file` and `--log-format`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// `--log-file`: the file lines are appended to; standard error when `None`.
    pub file: Option<PathBuf>,
    /// `--log-format`.
    pub format: LogFormat,
}

/// Why the log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `--log-file` cannot be opened for appending.
    #[error("--log-file {}: cannot be opened: {}", crate::config::one_line(path.display()), plugvm_remote::client::describe(source))]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A logger was set up already (in this process).
    #[error("cannot set up the log: {0}")]
    Init(String),
}

/// The `RUST_LOG` filter, `warn` when it is unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"))
}

/// A subscriber writing `format` lines that pass `filter` to `writer`; text lines with
/// colours when `ansi` (JSON never has any).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // The current span and the list of spans: a transaction's line names it either way.
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Opens `--log-file` for appending (created if need be), for [`init`].
pub fn open(config: &LogConfig) -> Result<Option<Arc<File>>, LogError> {
    let Some(path) = &config.file else {
        return Ok(None);
    };
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|f| Some(Arc::new(f)))
        .map_err(|source| LogError::Open {
            path: path.clone(),
            source,
        })
}

/// Sets the process's logger from `config` and `RUST_LOG`.
pub fn init(config: &LogConfig) -> Result<(), LogError> {
    let filter = env_filter();
    let subscriber = match open(config)? {
        // Each line is one `write` on a file opened for appending: lines from other writers
        // of the same file (a second plugvm) interleave whole.
        Some(file) => subscriber(config.format, filter, file, false),
        None => {
            // Colours only for a person at a terminal: logs kept in files are read by scripts.
            let ansi = config.format == LogFormat::Text
                && std::io::IsTerminal::is_terminal(&std::io::stderr());
            subscriber(config.format, filter, std::io::stderr, ansi)
        }
    };
    tracing::subscriber::set_global_default(subscriber).map_err(|e| LogError::Init(e.to_string()))
}

/// What a test logs, captured.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing::subscriber::Interest;
    use tracing::{span, Dispatch, Event, Metadata, Subscriber};

    /// A `MakeWriter` that keeps what is written.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> super::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// A dispatcher that logs nothing and is interested in every callsite "sometimes".
    ///
    /// Why: tracing caches each callsite's interest for the whole process, and while a
    /// single dispatcher is registered it asks the thread that reaches the callsite first. A
    /// parallel test without a subscriber would then cache "never" for a callsite another
    /// test captures, and the capture would miss its lines. With this one always registered
    /// too, the cache is at worst "sometimes": each thread's own subscriber decides.
    struct Anchor;

    impl Subscriber for Anchor {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::sometimes()
        }
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    /// Registers [`Anchor`], once: a test that captures logs calls this before it installs
    /// its subscriber.
    pub(crate) fn anchor() {
        static ANCHOR: OnceLock<Dispatch> = OnceLock::new();
        ANCHOR.get_or_init(|| Dispatch::new(Anchor));
    }

    /// The JSON lines logged at `filter` on this thread while `f` runs.
    pub(crate) fn json_lines(filter: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
        anchor();
        let captured = Captured::default();
        let subscriber = super::subscriber(
            super::LogFormat::Json,
            super::EnvFilter::new(filter),
            captured.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unopenable_log_file_is_one_line_naming_it() {
        let config = LogConfig {
            file: Some("/nonexistent/dir/plugvm.log".into()),
            format: LogFormat::Text,
        };
        let err = open(&config).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--log-file /nonexistent/dir/plugvm.log: cannot be opened: No such file or directory"
        );
        assert!(open(&LogConfig::default()).unwrap().is_none());
    }

    #[test]
    fn json_lines_carry_their_fields_and_spans() {
        let lines = capture::json_lines("info", || {
            let _span = tracing::error_span!("tx", id = 3, kind = "resize").entered();
            tracing::info!(answer = 42, "hello");
            tracing::debug!("filtered out");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["fields"]["message"], "hello");
        assert_eq!(lines[0]["span"]["id"], 3);
        assert_eq!(lines[0]["spans"][0]["kind"], "resize");
    }

    #[test]
    fn the_log_file_is_appended_to() {
        let dir = std::env::temp_dir().join(format!("plugvm-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmm.log");
        std::fs::write(&path, "earlier\n").unwrap();
        let config = LogConfig {
            file: Some(path.clone()),
            format: LogFormat::Json,
        };
        let file = open(&config).unwrap().unwrap();
        capture::anchor();
        let log = subscriber(config.format, EnvFilter::new("info"), file, false);
        tracing::subscriber::with_default(log, || tracing::info!(answer = 42, "hello"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "earlier", "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(line["fields"]["message"], "hello", "{line}");
        assert_eq!(line["fields"]["answer"], 42, "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
}

/// Microseconds from `from` to `to` (0 if `to` is earlier), for the log lines that time a step
/// (`served_us`, `mmap_us`, ...).
pub(crate) fn micros_between(from: std::time::Instant, to: std::time::Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}
