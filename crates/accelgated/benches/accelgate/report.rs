//! The result of a run: one row per figure, printed as a Markdown table (the README keeps the
//! current one) and written as JSON with the raw figures.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// A figure without a target.
    Info,
    /// Cannot be measured on this build yet.
    Pending,
}

impl Verdict {
    /// `within` says whether the figure meets its target.
    pub fn of(within: bool) -> Verdict {
        if within {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**MISSED**",
            Verdict::Info => "–",
            Verdict::Pending => "pending",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Item of issue 6 (1..6).
    pub item: u8,
    pub what: String,
    /// accelgate's figure.
    pub value: String,
    /// What it is compared with.
    pub floor: String,
    /// accelgate / floor, oriented as the target is (a cost ratio or a rate ratio).
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: Verdict,
}

/// How a figure compares: its ratio to the floor, the target, and whether it is met.
pub struct Judgement<'a> {
    pub ratio: Option<f64>,
    pub target: &'a str,
    pub verdict: Verdict,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Raw figures by name, for the JSON file.
    pub figures: Map<String, Value>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        item: u8,
        what: impl Into<String>,
        value: impl Into<String>,
        floor: impl Into<String>,
        judgement: Judgement,
    ) {
        self.rows.push(Row {
            item,
            what: what.into(),
            value: value.into(),
            floor: floor.into(),
            ratio: judgement.ratio,
            target: judgement.target.to_owned(),
            verdict: judgement.verdict,
        });
    }

    pub fn figure(&mut self, name: &str, value: impl Into<Value>) {
        self.figures.insert(name.to_owned(), value.into());
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn markdown(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}\n");
        out.push_str("| # | measure | accelgate | floor | ratio | target | result |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.item,
                r.what,
                r.value,
                r.floor,
                ratio,
                r.target,
                r.verdict.label()
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    pub fn write_json(&self, path: &Path, machine: &Map<String, Value>) -> Result<(), String> {
        let doc = serde_json::json!({
            "machine": machine,
            "rows": self.rows,
            "figures": self.figures,
            "notes": self.notes,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Microseconds, for a table cell.
pub fn us(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} ms", x / 1000.0)
    } else {
        format!("{x:.0} µs")
    }
}
