//! The one way engine and stage code talks to the user while a command runs: log lines
//! and progress bars, drawn so that a line never tears a bar.
//!
//! A reporter draws on stderr when it is a terminal, prints plain lines otherwise (or in
//! tests), or forwards lines to the parent process of a worker (see [`crate::worker`]).

use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};

/// Where log lines and progress bars go. Cheap to clone; clones share the bars.
#[derive(Clone)]
pub struct Reporter {
    multi: MultiProgress,
    /// Every bar handed out, so a worker can forward their state.
    bars: Arc<Mutex<Vec<ProgressBar>>>,
    forward_logs: Option<LogSink>,
}

/// Where a worker's log lines go instead of stderr.
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

impl Default for Reporter {
    fn default() -> Self {
        Self::hidden()
    }
}

impl Reporter {
    /// Bars on stderr when it is a terminal; log lines on stderr otherwise.
    pub fn stderr() -> Self {
        let multi = MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self { multi, bars: Default::default(), forward_logs: None }
    }

    /// No bars; log lines still go to stderr.
    pub fn hidden() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            bars: Default::default(),
            forward_logs: None,
        }
    }

    /// No bars drawn here; log lines go to `forward`, and bars are read back with [`Self::bars`].
    pub fn forwarding(forward: LogSink) -> Self {
        Self { forward_logs: Some(forward), ..Self::hidden() }
    }

    pub fn add(&self, bar: ProgressBar) -> ProgressBar {
        let bar = self.multi.add(bar);
        self.bars.lock().expect("progress bars lock").push(bar.clone());
        bar
    }

    /// The bars handed out so far, oldest first.
    pub fn bars(&self) -> Vec<ProgressBar> {
        self.bars.lock().expect("progress bars lock").clone()
    }

    /// Prints a line above the bars without tearing them.
    pub fn println(&self, line: &str) {
        if let Some(forward) = &self.forward_logs {
            forward(line);
        } else if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// A `warning: …` line.
    pub fn warn(&self, message: &str) {
        self.println(&format!("warning: {message}"));
    }
}
