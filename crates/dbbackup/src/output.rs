//! Rendering helpers: human sizes, one-line messages, JSON.

/// Joins a multi-line message into one line (server logs are line based).
pub fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Bytes in binary units: "16.0 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON value serializes"));
}

/// An aligned text table: columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// `headers` ending in '>' are right-aligned (numbers).
    pub fn new(headers: &[&str]) -> Table {
        let right = headers.iter().map(|h| h.ends_with('>')).collect();
        let head = headers.iter().map(|h| h.trim_end_matches('>').to_string()).collect();
        Table { rows: vec![head], right }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.right.len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        for r in &self.rows {
            let mut line = String::new();
            for (c, w) in widths.iter().enumerate() {
                let cell = r.get(c).map(String::as_str).unwrap_or("");
                if c > 0 {
                    line.push_str("  ");
                }
                if self.right[c] {
                    line.push_str(&format!("{cell:>w$}"));
                } else if c + 1 < cols {
                    line.push_str(&format!("{cell:<w$}"));
                } else {
                    line.push_str(cell);
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// RFC 3339 (UTC, seconds) of a file time.
pub fn time_text(t: Option<std::time::SystemTime>) -> String {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|| "-".into())
}
