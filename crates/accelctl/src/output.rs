//! Human output: aligned tables, key/value listings, and a progress bar for jobs.

use std::io::Write;

/// Columns separated by two spaces, each as wide as its widest cell; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key:  value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let key_width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let pad = key_width - key.chars().count();
        let line = format!("{key}:{}  {value}", " ".repeat(pad));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for an empty string, so that empty cells stay visible.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The first 12 hex digits of a hash, enough to tell images apart in a table.
pub fn short_hash(hash: &str) -> String {
    or_dash(&hash.chars().take(12).collect::<String>())
}

/// A byte size in the largest binary unit that divides it evenly (`64K`, `2M`), else in bytes.
pub fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (unit, suffix) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A register value as hex padded to its width.
pub fn hex(value: u64, width: u8) -> String {
    format!("0x{value:0digits$x}", digits = usize::from(width) * 2)
}

/// `[#########...........]  42%` for a fraction in 0..1 (clamped).
pub fn bar(fraction: f64, cells: usize) -> String {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (fraction * cells as f64).round() as usize;
    format!(
        "[{}{}] {:3.0}%",
        "#".repeat(filled),
        ".".repeat(cells - filled),
        fraction * 100.0
    )
}

/// A progress bar redrawn in place on stderr; silent when stderr is not a terminal.
pub struct ProgressBar {
    label: String,
    enabled: bool,
    drawn: Option<String>,
}

impl ProgressBar {
    pub fn new(label: String, enabled: bool) -> ProgressBar {
        ProgressBar {
            label,
            enabled,
            drawn: None,
        }
    }

    pub fn update(&mut self, fraction: f64) {
        if !self.enabled {
            return;
        }
        let line = format!("{} {}", self.label, bar(fraction, 30));
        // Redraw only on change: progress signals can be frequent.
        if self.drawn.as_deref() != Some(line.as_str()) {
            let mut stderr = std::io::stderr().lock();
            // A progress bar that cannot be drawn is not worth failing the job for.
            let _ = write!(stderr, "\r{line}");
            let _ = stderr.flush();
            self.drawn = Some(line);
        }
    }

    /// Ends the bar's line so that later output starts on a fresh one.
    pub fn finish(&mut self) {
        if self.drawn.take().is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = vec![
            vec![
                "fpga0".to_owned(),
                "0000:3b:00.0".to_owned(),
                "fpga".to_owned(),
            ],
            vec!["n".to_owned(), "0000:5e:00.1".to_owned(), "-".to_owned()],
        ];
        let text = table(&["DEVICE", "PCI", "KIND"], &rows);
        assert_eq!(
            text,
            "DEVICE  PCI           KIND\n\
             fpga0   0000:3b:00.0  fpga\n\
             n       0000:5e:00.1  -\n"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn fields_align_values() {
        let text = fields(&[("uid", "1000".into()), ("operations", "slice.read".into())]);
        assert_eq!(text, "uid:         1000\noperations:  slice.read\n");
        assert_eq!(fields(&[("tenant", String::new())]), "tenant:\n");
    }

    #[test]
    fn sizes_hex_and_hashes() {
        assert_eq!(size(0x10000), "64K");
        assert_eq!(size(3 << 20), "3M");
        assert_eq!(size(1 << 30), "1G");
        assert_eq!(size(1000), "1000");
        assert_eq!(size(0), "0");
        assert_eq!(hex(0xab, 1), "0xab");
        assert_eq!(hex(0x1, 4), "0x00000001");
        assert_eq!(hex(u64::MAX, 8), "0xffffffffffffffff");
        assert_eq!(short_hash(""), "-");
        assert_eq!(short_hash(&"ab".repeat(32)), "abababababab");
    }

    #[test]
    fn bars_fill_with_progress() {
        assert_eq!(bar(0.0, 4), "[....]   0%");
        assert_eq!(bar(0.5, 4), "[##..]  50%");
        assert_eq!(bar(1.0, 4), "[####] 100%");
        assert_eq!(bar(7.0, 4), "[####] 100%");
        assert_eq!(bar(f64::NAN, 4), "[....]   0%");
    }
}
