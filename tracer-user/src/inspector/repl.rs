//! `tracer repl`: an interactive session in a running node process, through
//! its inspector, with line editing and history (rustyline).
//!
//! The inspector port stays open for the session (it is what the session
//! talks through) and is closed when it ends: Ctrl-D, `.exit`, SIGTERM.
//! Ctrl-C at the prompt clears the input; during an evaluation it stops
//! waiting for it (the session goes on; the process is never touched by
//! it: code still running synchronously is stopped at --timeout, an awaited
//! promise keeps running).

use std::{path::PathBuf, sync::mpsc as std_mpsc, time::Duration};

use anyhow::{Context as _, Result};
use clap::Args;
use rustyline::{DefaultEditor, error::ReadlineError};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    audit::Audit,
    cdp::Cdp,
    eval::evaluate,
    session::{PORT_GUARD, PortState, arm_port_guard, with_inspector_on},
    target::Target,
};

/// An interactive JavaScript session inside a running node process.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  sudo tracer repl --pid 4242
  > process.memoryUsage().rss
  > const os = require('os')
  > function f(x) {
  ...   return x * 2
  ... }
  > await fetch('http://127.0.0.1:8080/health').then(r => r.status)

Input runs in the process's main context like node's own REPL (top-level
await, require). Unclosed brackets continue on the next line. Ctrl-C
cancels the input or stops waiting for an evaluation; Ctrl-D or .exit
leaves and closes the inspector port. Every evaluation is audited.")]
pub struct ReplArgs {
    /// Process to attach to.
    #[arg(long, value_name = "PID")]
    pub pid: u32,
    /// Stop synchronous code after this long (per evaluation).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

enum Input {
    Line(String),
    /// Ctrl-C at the prompt: forget a partly typed multi-line input.
    Reset,
}

#[derive(Clone, Copy)]
enum Prompt {
    Fresh,
    Continue,
}

pub async fn run(args: ReplArgs) -> Result<()> {
    super::require_root("repl")?;
    let target = Target::inspect(args.pid)?;
    let audit = Audit::begin("repl", args.pid, &target.exe, json!({}))?;
    let (line_tx, line_rx) = mpsc::channel::<Input>(1);
    let (prompt_tx, prompt_rx) = std_mpsc::channel::<Prompt>();
    std::thread::Builder::new()
        .name("tracer-repl-input".into())
        .spawn(move || read_lines(line_tx, prompt_rx))
        .context("starting the input thread")?;
    let pid = args.pid;
    let exe = target.exe.clone();
    let timeout = args.timeout;
    let result = with_inspector_on(&target, false, async move |cdp, state| {
        session(cdp, state, line_rx, prompt_tx, pid, &exe, timeout).await
    });
    audit.end(
        &result,
        json!({ "evaluations": result.as_ref().ok().copied() }),
    );
    result.map(|_| ())
}

fn history_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".tracer_repl_history")
}

/// The input thread: reads lines with rustyline, hands each to the
/// session, and waits for it to finish before prompting again.
fn read_lines(tx: mpsc::Sender<Input>, prompts: std_mpsc::Receiver<Prompt>) {
    let mut rl = match DefaultEditor::new() {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("error: starting line editing: {e}");
            return;
        }
    };
    let history = history_path();
    let _ = rl.load_history(&history);
    let mut prompt = Prompt::Fresh;
    loop {
        let text = match prompt {
            Prompt::Fresh => "> ",
            Prompt::Continue => "... ",
        };
        match rl.readline(text) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                if tx.blocking_send(Input::Line(line)).is_err() {
                    break;
                }
                match prompts.recv() {
                    Ok(p) => prompt = p,
                    Err(_) => break,
                }
            }
            Err(ReadlineError::Interrupted) => {
                prompt = Prompt::Fresh;
                if tx.blocking_send(Input::Reset).is_err() {
                    break;
                }
            }
            // Ctrl-D, or stdin closed: dropping `tx` ends the session.
            Err(_) => break,
        }
    }
    let _ = rl.save_history(&history);
}

async fn session(
    cdp: &mut Cdp,
    state: PortState,
    mut lines: mpsc::Receiver<Input>,
    prompts: std_mpsc::Sender<Prompt>,
    pid: u32,
    exe: &str,
    timeout: Duration,
) -> Result<u64> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let how = match state {
        PortState::AlreadyOpen => "its inspector was already open and stays open",
        _ => "its inspector port is open until you leave",
    };
    eprintln!(
        "tracer: connected to PID {pid} ({exe}); {how}. Ctrl-D or .exit leaves, Ctrl-C \
         cancels."
    );
    let mut buffer = String::new();
    let mut evaluations = 0u64;
    // The port guard (session.rs) is re-armed while the session lasts.
    let guarded = state != PortState::AlreadyOpen;
    let guard = PORT_GUARD.max(timeout + Duration::from_secs(10));
    let mut heartbeat = tokio::time::interval(PORT_GUARD / 3);
    loop {
        let input = tokio::select! {
            i = lines.recv() => i,
            // A SIGINT while nothing runs (input not from a terminal).
            _ = sigint.recv() => continue,
            _ = heartbeat.tick(), if guarded => {
                arm_port_guard(cdp, PORT_GUARD).await?;
                continue;
            }
        };
        let line = match input {
            None => break,
            Some(Input::Reset) => {
                buffer.clear();
                continue;
            }
            Some(Input::Line(l)) => l,
        };
        if buffer.is_empty() && line.trim() == ".exit" {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if buffer.trim().is_empty() {
            buffer.clear();
            let _ = prompts.send(Prompt::Fresh);
            continue;
        }
        if !is_complete(&buffer) {
            let _ = prompts.send(Prompt::Continue);
            continue;
        }
        let code = std::mem::take(&mut buffer);
        if guarded {
            arm_port_guard(cdp, guard).await?;
        }
        let audit = Audit::begin("repl.eval", pid, exe, json!({ "expression": code }))?;
        let outcome = tokio::select! {
            r = evaluate(cdp, &code, timeout) => Some(r),
            _ = sigint.recv() => None,
        };
        evaluations += 1;
        match &outcome {
            Some(Ok(v)) => println!("{}", v.to_text()),
            Some(Err(e)) => println!("error: {e:#}"),
            None => println!(
                "(cancelled: no longer waiting; synchronous code still running stops at \
                 --timeout, an awaited promise keeps running)"
            ),
        }
        match outcome {
            Some(r) => audit.end(&r, json!(null)),
            None => audit.end::<()>(&Err(anyhow::anyhow!("cancelled with Ctrl-C")), json!(null)),
        }
        if prompts.send(Prompt::Fresh).is_err() {
            break;
        }
    }
    Ok(evaluations)
}

/// Whether `code` is complete enough to evaluate: every bracket closed,
/// no template literal or block comment open. A rough JavaScript lexer
/// (strings, templates with `${}`, comments); V8 reports real syntax
/// errors when the code runs. Written here because no crate answers "is
/// this input finished" for JavaScript without a full parser.
pub fn is_complete(code: &str) -> bool {
    #[derive(PartialEq)]
    enum Open {
        Bracket(char),
        Template,
        /// `${` inside a template.
        Substitution,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if stack.last() == Some(&Open::Template) {
            match c {
                '\\' => {
                    chars.next();
                }
                '`' => {
                    stack.pop();
                }
                '$' if chars.peek() == Some(&'{') => {
                    chars.next();
                    stack.push(Open::Substitution);
                }
                _ => {}
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                // A string ends at its quote or (an error V8 reports) the line.
                while let Some(s) = chars.next() {
                    if s == '\\' {
                        chars.next();
                    } else if s == c || s == '\n' {
                        break;
                    }
                }
            }
            '`' => stack.push(Open::Template),
            '/' if chars.peek() == Some(&'/') => {
                for s in chars.by_ref() {
                    if s == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut closed = false;
                let mut prev = ' ';
                for s in chars.by_ref() {
                    if prev == '*' && s == '/' {
                        closed = true;
                        break;
                    }
                    prev = s;
                }
                if !closed {
                    return false;
                }
            }
            '(' | '[' | '{' => stack.push(Open::Bracket(c)),
            '}' if stack.last() == Some(&Open::Substitution) => {
                stack.pop();
            }
            ')' | ']' | '}' => {
                // A stray closer is a syntax error: complete, let V8 say so.
                if let Some(Open::Bracket(_)) = stack.last() {
                    stack.pop();
                } else {
                    return true;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

#[cfg(test)]
mod tests {
    use super::is_complete;

    #[test]
    fn completeness() {
        assert!(is_complete("1 + 1\n"));
        assert!(!is_complete("function f(a) {\n"));
        assert!(is_complete("function f(a) {\n  return a + 1;\n}\n"));
        assert!(!is_complete("const s = `a ${x\n"));
        assert!(!is_complete("const s = `line\n"));
        assert!(is_complete("const s = `a ${ {b: 1}.b } c`\n"));
        assert!(is_complete("'{' + \"(\" // [\n"));
        assert!(!is_complete("/* open\n"));
        assert!(is_complete("foo())\n"));
    }
}
