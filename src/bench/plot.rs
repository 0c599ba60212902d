//! The plot: output throughput and p90 latencies against concurrency, as PNG or SVG
//! (chosen by the file's extension). Text needs a TrueType font: `--plot-font FILE`, or
//! the first of a few common system fonts (Debian: `fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::stats::LevelStats;

/// The family name the plot's text uses (registered from a file at run time).
const FAMILY: &str = "sans-serif";

/// Fonts tried when `--plot-font` is not given.
const SYSTEM_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// The image format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// `.png` or `.svg` (any case); anything else is an error.
    pub fn of(path: &Path) -> anyhow::Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => bail!(
                "--plot {}: the file must end in .png or .svg",
                path.display()
            ),
        }
    }
}

/// Registers the font once per process: `explicit`, or the first system font found.
fn register_font(explicit: Option<&Path>) -> anyhow::Result<()> {
    static REGISTERED: OnceLock<PathBuf> = OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "--plot needs a TrueType font for its labels and found none of {SYSTEM_FONTS:?}: \
                     pass --plot-font FILE.ttf (Debian: apt-get install fonts-dejavu-core)"
                )
            })?,
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read the font {}", path.display()))?;
    // plotters keeps fonts for the life of the process; this runs once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", path.display()))?;
    let _ = REGISTERED.set(path);
    Ok(())
}

/// One latency line: its legend, its color and how to read it from a level.
type Series = (&'static str, RGBColor, fn(&LevelStats) -> f64);

/// Draws `levels` (sorted by concurrency) into `path`.
pub fn write_plot(
    path: &Path,
    levels: &[LevelStats],
    title: &str,
    font: Option<&Path>,
) -> anyhow::Result<()> {
    let format = Format::of(path)?;
    if levels.is_empty() {
        bail!("--plot: no levels to plot");
    }
    register_font(font)?;
    let mut sorted: Vec<&LevelStats> = levels.iter().collect();
    sorted.sort_by(|a, b| a.concurrency.total_cmp(&b.concurrency));
    let size = (1200, 500);
    match format {
        Format::Png => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(&root, &sorted, title)?;
            root.present()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Format::Svg => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, &sorted, title)?;
            root.present()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    levels: &[&LevelStats],
    title: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 22)).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let max_c = levels.iter().map(|l| l.concurrency).fold(1.0, f64::max) * 1.05;
    let c_axis = 0.0..max_c;

    let tps: Vec<(f64, f64)> = levels
        .iter()
        .map(|l| (l.concurrency, l.output_tokens_per_s))
        .collect();
    let max_tps = tps.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("Output throughput", (FAMILY, 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(c_axis.clone(), 0.0..max_tps)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("concurrency (requests in flight)")
        .y_desc("output tokens/s")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(tps.iter().copied(), BLUE.stroke_width(2)))
        .map_err(err)?
        .label("output tokens/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(tps.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(err)?;

    let series: [Series; 3] = [
        ("TTFT p90", RED, |l| l.ttft_s.p90),
        ("ITL p90", GREEN, |l| l.itl_s.p90),
        ("e2e p90", MAGENTA, |l| l.e2e_s.p90),
    ];
    let max_s = levels
        .iter()
        .flat_map(|l| series.iter().map(move |s| (s.2)(l)))
        .fold(0.001, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption("Latency (p90)", (FAMILY, 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(c_axis, 0.0..max_s)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("concurrency (requests in flight)")
        .y_desc("seconds")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    for (name, color, get) in series {
        let points: Vec<(f64, f64)> = levels.iter().map(|l| (l.concurrency, get(l))).collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{Outcome, RequestRecord};

    fn level(c: f64) -> LevelStats {
        let o = Outcome::Ok(RequestRecord {
            ttft_s: 0.1 * c,
            itl_s: vec![0.02, 0.03],
            e2e_s: 0.5 + 0.1 * c,
            prompt_tokens: 4,
            output_tokens: 3,
            has_usage: true,
        });
        LevelStats::from_outcomes(Some(c), &[o], 0, 1.0)
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::of(Path::new("a/b.PNG")).unwrap(), Format::Png);
        assert_eq!(Format::of(Path::new("b.svg")).unwrap(), Format::Svg);
        assert!(Format::of(Path::new("b.pdf")).is_err());
        assert!(Format::of(Path::new("b")).is_err());
    }

    #[test]
    fn png_and_svg_plots_are_written() {
        let levels = vec![level(4.0), level(1.0), level(8.0)];
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("p.svg");
        write_plot(&svg, &levels, "test", None).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("TTFT p90"),
            "{}",
            &text[..200.min(text.len())]
        );
        let png = dir.path().join("p.png");
        write_plot(&png, &levels, "test", None).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
