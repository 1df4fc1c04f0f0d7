//! What a command would do: each selected stage's state and action, and
//! why.

use std::fmt::Write as _;

/// A stage's state as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Done,
    /// Built, but not from what it would be built from now.
    Stale(Vec<String>),
    /// Never built (or its stamp was removed).
    Missing,
}

impl State {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            State::Done => "done",
            State::Stale(_) => "stale",
            State::Missing => "missing",
        }
    }
}

/// What a command would do with one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Vec<String>),
    UpToDate,
    /// Cannot run: an input was never built. The text says what to run.
    Blocked(String),
}

#[derive(Debug, Clone)]
pub struct PlanStep {
    pub(crate) stage: &'static str,
    pub action: Action,
}

/// What a command would do, stage by stage, and what it would use as-is.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    /// Earlier stages used as they are although they are stale.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The first stage that cannot run, and why, as one sentence.
    pub(crate) fn blocked(&self) -> Option<String> {
        self.steps.iter().find_map(|s| match &s.action {
            Action::Blocked(why) => Some(format!("{} {why}", s.stage)),
            _ => None,
        })
    }

    pub fn will_run(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps
            .iter()
            .filter(|s| matches!(s.action, Action::Run(_)))
            .map(|s| s.stage)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for step in &self.steps {
            let (what, why) = match &step.action {
                Action::Run(reasons) => ("run", reasons.join("; ")),
                Action::UpToDate => ("skip", "up to date".to_owned()),
                Action::Blocked(why) => ("blocked", why.clone()),
            };
            let _ = writeln!(s, "  {:<9} {:<8} {}", step.stage, what, why);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        s
    }
}
