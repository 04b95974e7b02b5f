//! The figure of the kube bench: event → map write latency (p50, p99) and agent memory
//! against cluster size, as a self-contained SVG.

use std::fmt::Write as _;

pub struct Point {
    pub pods: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rss_mib: f64,
    pub peak_mib: f64,
}

/// A named, coloured line of (pods, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(usize, f64)>);

const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 28.0;

/// Two panels side by side; `goals` are drawn as dashed lines (latency p99 and RSS goals at
/// 10k and 100k pods).
pub fn svg(
    points: &[Point],
    latency_goals: &[(usize, f64)],
    memory_goals: &[(usize, f64)],
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * WIDTH + 20.0
    );
    let latency: Vec<Series> = vec![
        (
            "p50",
            "#1f77b4",
            points.iter().map(|p| (p.pods, p.p50_ms)).collect(),
        ),
        (
            "p99",
            "#d62728",
            points.iter().map(|p| (p.pods, p.p99_ms)).collect(),
        ),
    ];
    panel(
        &mut out,
        0.0,
        "watch event → map write (ms)",
        &latency,
        latency_goals,
    );
    let memory: Vec<Series> = vec![
        (
            "RSS",
            "#2ca02c",
            points.iter().map(|p| (p.pods, p.rss_mib)).collect(),
        ),
        (
            "peak",
            "#9467bd",
            points.iter().map(|p| (p.pods, p.peak_mib)).collect(),
        ),
    ];
    panel(
        &mut out,
        WIDTH + 20.0,
        "agent memory (MiB)",
        &memory,
        memory_goals,
    );
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, x0: f64, title: &str, series: &[Series], goals: &[(usize, f64)]) {
    let max_x = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .chain(goals.iter().map(|g| g.0))
        .max()
        .unwrap_or(1) as f64;
    let max_y = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .chain(goals.iter().map(|g| g.1))
        .fold(1.0, f64::max)
        * 1.1;
    let (w, h) = (WIDTH - LEFT - 10.0, HEIGHT - TOP - BOTTOM);
    let x = |v: f64| x0 + LEFT + v / max_x * w;
    let y = |v: f64| TOP + h - v / max_y * h;
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"16\" font-weight=\"bold\">{title}</text>",
        x0 + LEFT
    );
    let _ = writeln!(
        out,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        x(0.0),
        y(0.0),
        x(max_x),
        y(0.0)
    );
    let _ = writeln!(
        out,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        x(0.0),
        y(0.0),
        x(0.0),
        y(max_y)
    );
    for tick in 0..=4 {
        let value = max_y * tick as f64 / 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{value:.0}</text>",
            x(0.0) - 4.0,
            y(value) + 4.0
        );
    }
    for pods in series
        .first()
        .map(|s| s.2.iter().map(|p| p.0).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}k</text>",
            x(pods as f64),
            y(0.0) + 14.0,
            pods / 1000
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">pods</text>",
        x(max_x / 2.0),
        HEIGHT - 4.0
    );
    for (pods, goal) in goals {
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"gray\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{}\" fill=\"gray\">goal at {}k</text>",
            x(*pods as f64) - 14.0, y(*goal), x(*pods as f64) + 14.0, y(*goal), x(*pods as f64) - 60.0, y(*goal) - 3.0, pods / 1000
        );
    }
    for (index, (name, color, values)) in series.iter().enumerate() {
        let path: Vec<String> = values
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px as f64), y(*py)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (px, py) in values {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                x(*px as f64),
                y(*py)
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            x0 + LEFT + 10.0 + 50.0 * index as f64,
            TOP + 4.0
        );
    }
}
