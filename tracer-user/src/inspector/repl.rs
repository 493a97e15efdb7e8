//! `tracer repl`: an interactive session in a running node process.
