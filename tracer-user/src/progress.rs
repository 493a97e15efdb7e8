//! One status line on stderr while a long step runs, on a terminal only:
//! piped stderr (tests, log files) and stdout (events, `--json`) never see it.

use std::io::{IsTerminal, Write};

pub struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    /// A status line if stderr is a terminal; silent otherwise.
    pub fn on_stderr() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Never shows anything.
    pub fn hidden() -> Self {
        Self {
            tty: false,
            shown: false,
        }
    }

    /// Replace the status line with `msg`.
    pub fn step(&mut self, msg: &str) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            // \r and "erase to end of line": the line is rewritten in place.
            let _ = write!(err, "\r\x1b[Ktracer: {msg}");
            let _ = err.flush();
            self.shown = true;
        }
    }

    /// Remove the status line, so that the next message starts clean.
    pub fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
