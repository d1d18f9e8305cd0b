//! A hand-written SVG chart of a report: horizontal bars on a log scale,
//! one panel for the read side and one for `synchronize` latency.

use std::fmt::Write as _;

use crate::read_side::Contender;
use crate::report::Report;

/// Width of the whole chart, in pixels.
const WIDTH: f64 = 900.0;
/// Width of the label column on the left.
const LABEL_WIDTH: f64 = 260.0;
/// Height of one bar.
const BAR: f64 = 11.0;
/// Gap between two groups of bars.
const GROUP_GAP: f64 = 8.0;
/// Series colors, one per thread count or percentile.
const COLORS: [&str; 6] = [
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
];

/// A labelled group of bars, one value per series (`None` leaves a gap).
struct Group {
    label: String,
    values: Vec<Option<f64>>,
}

/// Renders `report` as a standalone SVG document.
///
/// # Examples
///
/// ```no_run
/// let report = nmi_rcu_bench::run(&nmi_rcu_bench::Config::quick(), &mut |_| {});
/// std::fs::write("bench.svg", nmi_rcu_bench::svg::render(&report)).unwrap();
/// ```
pub fn render(report: &Report) -> String {
    let mut body = String::new();
    let mut y = 10.0;

    let series: Vec<String> = report
        .config
        .threads
        .iter()
        .map(|n| format!("{n} thread(s)"))
        .collect();
    let groups: Vec<Group> = Contender::ALL
        .iter()
        .map(|&contender| Group {
            label: contender.name().to_owned(),
            values: report
                .config
                .threads
                .iter()
                .map(|&n| report.read_ns(contender, n))
                .collect(),
        })
        .filter(|group| group.values.iter().any(Option::is_some))
        .collect();
    y = panel(
        &mut body,
        y,
        "Read-side section, ns per iteration per thread (median, log scale)",
        "ns",
        &series,
        &groups,
    );

    let series = vec!["p50".to_owned(), "p99".to_owned()];
    let groups: Vec<Group> = report
        .synchronize_latency
        .iter()
        .map(|row| Group {
            label: format!("{}: {}", row.library, row.setting),
            values: vec![Some(row.ns.p50 / 1e3), Some(row.ns.p99 / 1e3)],
        })
        .collect();
    y = panel(
        &mut body,
        y + 20.0,
        "synchronize latency, microseconds (log scale)",
        "us",
        &series,
        &groups,
    );

    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        height = y + 10.0
    )
}

/// Draws one panel starting at `top` and returns the y below it.
fn panel(
    out: &mut String,
    top: f64,
    title: &str,
    unit: &str,
    series: &[String],
    groups: &[Group],
) -> f64 {
    let values = groups
        .iter()
        .flat_map(|group| group.values.iter().flatten().copied());
    let (min, max) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if groups.is_empty() || min <= 0.0 || max <= 0.0 {
        return top;
    }
    let low = 10f64.powf(min.log10().floor());
    let high = 10f64.powf(max.log10().ceil()).max(low * 10.0);
    let plot_width = WIDTH - LABEL_WIDTH - 80.0;
    let x_of = |value: f64| LABEL_WIDTH + (value / low).log10() / (high / low).log10() * plot_width;

    // Step 1: the title and the legend.
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        top + 12.0,
        escape(title)
    );
    let mut legend_x = LABEL_WIDTH;
    for (index, name) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let _ = writeln!(
            out,
            "<rect x=\"{legend_x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/>",
            top + 20.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            legend_x + 14.0,
            top + 29.0,
            escape(name)
        );
        legend_x += 110.0;
    }

    // Step 2: decade grid lines with their labels.
    let plot_top = top + 40.0;
    let group_height = BAR * series.len() as f64 + GROUP_GAP;
    let plot_bottom = plot_top + group_height * groups.len() as f64;
    let mut decade = low;
    while decade <= high * 1.0001 {
        let x = x_of(decade);
        let _ = writeln!(out, "<line x1=\"{x:.1}\" y1=\"{plot_top}\" x2=\"{x:.1}\" y2=\"{plot_bottom}\" stroke=\"#ccc\"/>");
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{} {unit}</text>",
            plot_bottom + 14.0,
            format_decade(decade)
        );
        decade *= 10.0;
    }

    // Step 3: one group of bars per label, with the value at the bar's end.
    for (row, group) in groups.iter().enumerate() {
        let group_top = plot_top + row as f64 * group_height;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            LABEL_WIDTH - 6.0,
            group_top + group_height / 2.0,
            escape(&group.label)
        );
        for (index, value) in group.values.iter().enumerate() {
            let Some(value) = *value else { continue };
            let y = group_top + index as f64 * BAR;
            let width = (x_of(value) - LABEL_WIDTH).max(1.0);
            let color = COLORS[index % COLORS.len()];
            let _ = writeln!(out, "<rect x=\"{LABEL_WIDTH}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{}\" fill=\"{color}\"/>", BAR - 1.0);
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>",
                LABEL_WIDTH + width + 3.0,
                y + BAR - 2.0,
                crate::table::num(value)
            );
        }
    }
    plot_bottom + 20.0
}

/// Formats a power of ten without trailing zeros: 0.1, 1, 10, 1000.
fn format_decade(value: f64) -> String {
    if value >= 1.0 {
        format!("{value:.0}")
    } else {
        let digits = (-value.log10()).round() as usize;
        format!("{value:.digits$}")
    }
}

/// Escapes the characters that are special in SVG text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decades_have_no_trailing_zeros() {
        assert_eq!(format_decade(0.1), "0.1");
        assert_eq!(format_decade(1.0), "1");
        assert_eq!(format_decade(1000.0), "1000");
    }

    #[test]
    fn escape_special_characters() {
        assert_eq!(escape("a < b & c"), "a &lt; b &amp; c");
    }
}
