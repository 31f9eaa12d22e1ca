//! A small SVG bar chart, written by hand: one panel per measure, two bars (SDK and floor)
//! per group, each group labelled with its SDK / floor ratio (of time or memory, so that above
//! 1 always means the SDK costs more).

use std::fmt::Write;

/// One measure: groups of (label, SDK value, floor value).
pub struct Panel {
    pub title: String,
    pub groups: Vec<(String, f64, f64)>,
    pub decimals: usize,
    /// The values are rates (calls/s): the ratio shown is floor / SDK, time per call.
    pub rate: bool,
}

const WIDTH: f64 = 760.0;
const LABEL: f64 = 110.0;
const RATIO: f64 = 150.0;
const BAR: f64 = 14.0;
const GAP: f64 = 10.0;
const TITLE: f64 = 28.0;
const SDK_COLOUR: &str = "#e4572e";
const FLOOR_COLOUR: &str = "#4c78a8";

pub fn render(title: &str, panels: &[Panel]) -> String {
    let plot = WIDTH - LABEL - RATIO - 60.0;
    let mut body = String::new();
    let mut y = 56.0;
    for p in panels {
        let max = p
            .groups
            .iter()
            .flat_map(|g| [g.1, g.2])
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            y + 16.0,
            escape(&p.title)
        );
        y += TITLE;
        for (label, sdk, floor) in &p.groups {
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LABEL - 8.0,
                y + BAR + 4.0,
                escape(label)
            );
            for (i, (value, colour)) in [(sdk, SDK_COLOUR), (floor, FLOOR_COLOUR)]
                .into_iter()
                .enumerate()
            {
                let top = y + i as f64 * BAR;
                let w = (value / max * plot).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<rect x="{LABEL:.1}" y="{top:.1}" width="{w:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{:.*}</text>"#,
                    BAR - 2.0,
                    LABEL + w + 4.0,
                    top + BAR - 4.0,
                    p.decimals,
                    value
                );
            }
            let ratio = if p.rate { floor / sdk } else { sdk / floor };
            let label = format!("SDK/floor {ratio:.3}");
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12">{label}</text>"#,
                WIDTH - 10.0,
                y + BAR + 4.0,
            );
            y += 2.0 * BAR + GAP;
        }
        y += GAP;
    }
    let height = y + 10.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="16" font-weight="bold">{}</text>
<rect x="10" y="32" width="12" height="12" fill="{SDK_COLOUR}"/><text x="27" y="43">SDK (dub.track())</text>
<rect x="170" y="32" width="12" height="12" fill="{FLOOR_COLOUR}"/><text x="187" y="43">floor (bare reqwest + serde_json)</text>
{body}</svg>
"#,
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
