//! Writing events to stdout, as text or JSON Lines.

use std::io::{BufWriter, Stdout, Write as _};

use anyhow::Result;

use crate::{event::Event, runner::Sink};

pub struct StdoutSink {
    out: BufWriter<Stdout>,
    json: bool,
}

impl StdoutSink {
    pub fn new(json: bool) -> Self {
        Self {
            out: BufWriter::new(std::io::stdout()),
            json,
        }
    }

    /// A final line (the summary). The consumer may be gone already.
    pub fn finish(&mut self, summary: &serde_json::Value) {
        if self.json {
            let _ = writeln!(self.out, "{summary}");
        }
        let _ = self.out.flush();
    }
}

impl Sink for StdoutSink {
    fn emit(&mut self, event: &Event) -> Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, event)?;
            self.out.write_all(b"\n")?;
        } else {
            writeln!(self.out, "{}", event.to_text())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }
}
