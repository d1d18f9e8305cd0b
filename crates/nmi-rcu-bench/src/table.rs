//! Plain-text tables with aligned columns.

/// A text table: a header row and data rows, left-aligned first column,
/// right-aligned other columns.
///
/// # Examples
///
/// ```
/// use nmi_rcu_bench::table::Table;
///
/// let mut table = Table::new(&["contender", "ns"]);
/// table.row(vec!["floor".into(), "1.6".into()]);
/// let text = table.render();
/// assert!(text.contains("floor"));
/// assert!(text.lines().count() == 3);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Starts a table with these column headers.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|cell| (*cell).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Missing cells render empty and extra cells are kept.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the header, a rule, and the rows, one line each.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }

        let mut out = String::new();
        render_row(&mut out, &self.header, &widths);
        let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
        render_row(&mut out, &rule, &widths);
        for row in &self.rows {
            render_row(&mut out, row, &widths);
        }
        out
    }
}

fn render_row(out: &mut String, cells: &[String], widths: &[usize]) {
    let empty = String::new();
    let mut line = String::new();
    for (column, width) in widths.iter().enumerate() {
        let cell = cells.get(column).unwrap_or(&empty);
        if column == 0 {
            line.push_str(&format!("{cell:<width$}"));
        } else {
            line.push_str(&format!("  {cell:>width$}"));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Formats a number with about three significant digits.
///
/// # Examples
///
/// ```
/// use nmi_rcu_bench::table::num;
/// assert_eq!(num(1.2345), "1.23");
/// assert_eq!(num(123.45), "123");
/// assert_eq!(num(12345.6), "12346");
/// ```
pub fn num(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
