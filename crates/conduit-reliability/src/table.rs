//! A plain-text table (the same layout as xtask's).

/// Prints `rows` under `header`: the first `left` columns left-aligned, the
/// others right-aligned.
pub fn print(header: &[&str], left: usize, rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            } else {
                widths.push(cell.chars().count());
            }
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i < left || i >= header.len() {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    let total: usize = widths.iter().take(header.len()).sum::<usize>() + 2 * (header.len() - 1);
    println!("{}", "-".repeat(total));
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
