//! The plugin's log: one line per event on stderr, or appended to the config's `logFile`.
//! Never stdout, which belongs to the runtime.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Log {
    sink: Box<dyn Write>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

impl Log {
    pub fn new(sink: Box<dyn Write>) -> Self {
        Self { sink }
    }

    pub fn stderr() -> Self {
        Self::new(Box::new(io::stderr()))
    }

    /// Switches to appending to `path`; on failure, says so where it logs now and stays there.
    pub fn redirect(&mut self, path: &Path) {
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => self.sink = Box::new(file),
            Err(e) => self.write(
                Level::Warn,
                format_args!(
                    "cannot open logFile {}: {e}; logging to stderr",
                    path.display()
                ),
            ),
        }
    }

    pub fn write(&mut self, level: Level, msg: fmt::Arguments<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // One write per line, so concurrent invocations appending to one file don't interleave.
        let line = format!(
            "{}.{:03} fibril-cni[{}] {level} {msg}\n",
            now.as_secs(),
            now.subsec_millis(),
            std::process::id()
        );
        // A log that cannot be written must not fail the CNI call.
        let _ = self.sink.write_all(line.as_bytes());
        let _ = self.sink.flush();
    }

    /// Text as is, for the about message a person reads.
    pub fn raw(&mut self, text: &str) {
        let _ = self.sink.write_all(text.as_bytes());
        let _ = self.sink.flush();
    }

    pub fn info(&mut self, msg: fmt::Arguments<'_>) {
        self.write(Level::Info, msg);
    }

    pub fn warn(&mut self, msg: fmt::Arguments<'_>) {
        self.write(Level::Warn, msg);
    }

    pub fn error(&mut self, msg: fmt::Arguments<'_>) {
        self.write(Level::Error, msg);
    }
}
