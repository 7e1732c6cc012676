//! Markdown tables, number formatting and the SVG plot.

use std::fmt::Write as _;

use crate::data::Summary;

pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut s = String::new();
        let _ = writeln!(s, "\n### {}\n", self.title);
        let _ = writeln!(s, "| {} |", self.headers.join(" | "));
        let _ = writeln!(
            s,
            "|{}|",
            self.headers
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "---:" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n{n}");
        }
        print!("{s}");
    }
}

/// 1234 -> "1.23k", 12_345_678 -> "12.3M".
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    let (v, suf) = if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if v >= 100.0 {
        format!("{v:.0}{suf}")
    } else if v >= 10.0 {
        format!("{v:.1}{suf}")
    } else {
        format!("{v:.2}{suf}")
    }
}

/// Seconds with a unit that fits.
pub fn secs(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    if x >= 1.0 {
        format!("{x:.2} s")
    } else if x >= 1e-3 {
        let m = x * 1e3;
        if m >= 100.0 {
            format!("{m:.0} ms")
        } else if m >= 10.0 {
            format!("{m:.1} ms")
        } else {
            format!("{m:.2} ms")
        }
    } else if x >= 1e-6 {
        let u = x * 1e6;
        if u >= 100.0 {
            format!("{u:.0} µs")
        } else {
            format!("{u:.1} µs")
        }
    } else {
        format!("{:.0} ns", x * 1e9)
    }
}

pub fn mib(bytes: f64) -> String {
    if !bytes.is_finite() {
        return "–".to_owned();
    }
    let m = bytes / f64::from(1u32 << 20);
    if m >= 100.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

/// "median (min–max)" with a formatter.
pub fn sum(s: Summary, f: fn(f64) -> String) -> String {
    if !s.med.is_finite() {
        return "–".to_owned();
    }
    format!("{} ({}–{})", f(s.med), f(s.min), f(s.max))
}

/// `x / base` as "0.42×".
pub fn ratio(x: f64, base: f64) -> String {
    let r = x / base;
    if !r.is_finite() {
        return "–".to_owned();
    }
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// One line of the plot: a store's median commits/s per thread count.
pub struct Series {
    pub label: String,
    pub points: Vec<(usize, f64)>,
    /// A limit measured at one thread, drawn as a dashed horizontal line.
    pub flat: bool,
}

const COLORS: [&str; 10] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#ff7f0e", "#17becf",
    "#7f7f7f", "#bcbd22",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Durable commits/s against threads, both axes logarithmic.
pub fn svg(title: &str, threads: &[usize], series: &[Series]) -> String {
    svg_axes(
        title,
        threads,
        ("committing threads", "durable commits/s (log)"),
        series,
    )
}

/// One value per x against x (`xs`, the x ticks), both axes logarithmic; `labels` names
/// the x and y axes.
pub fn svg_axes(title: &str, threads: &[usize], labels: (&str, &str), series: &[Series]) -> String {
    let (w, h) = (820.0, 480.0);
    let (left, right, top, bottom) = (80.0, 250.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let vals = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo, hi) };
    let dlo = lo.log10().floor();
    let dhi = hi.log10().ceil().max(dlo + 1.0);
    let tmin = threads.first().copied().unwrap_or(1).max(1) as f64;
    let tmax = threads.last().copied().unwrap_or(2).max(2) as f64;
    let x = |t: f64| left + pw * (t.log2() - tmin.log2()) / (tmax.log2() - tmin.log2()).max(1e-9);
    let y = |v: f64| top + ph * (1.0 - (v.log10() - dlo) / (dhi - dlo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid: decades and 2×, 5× lines.
    let mut d = dlo;
    while d <= dhi + 1e-9 {
        for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = m * 10f64.powf(d);
            if v.log10() > dhi + 1e-9 {
                continue;
            }
            let yy = y(v);
            let (stroke, label) = if major {
                ("#bbb", true)
            } else {
                ("#eee", m == 2.0 || m == 5.0)
            };
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}"/>"#,
                left + pw
            );
            if label {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    yy + 4.0,
                    num(v)
                );
            }
        }
        d += 1.0;
    }
    for &t in threads {
        let xx = x(t as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + ph + 18.0,
            num(t as f64).replace(".00", "")
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 18.0,
        esc(labels.0)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        esc(labels.1)
    );
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = se
            .points
            .iter()
            .filter(|p| p.1.is_finite() && p.1 > 0.0)
            .map(|&(t, v)| (x(t as f64), y(v)))
            .collect();
        let width = if i == 0 { 3 } else { 2 };
        if se.flat {
            if let Some(&(_, yy)) = pts.first() {
                let _ = writeln!(
                    s,
                    r#"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{c}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
                    left + pw
                );
            }
        } else {
            let path: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="{width}"/>"#,
                path.join(" ")
            );
            for (a, b) in &pts {
                let _ = writeln!(s, r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="{c}"/>"#);
            }
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + pw + 15.0;
        let dash = if se.flat {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="{width}"{dash}/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            esc(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}
