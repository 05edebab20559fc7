//! `--plot FILE.svg|FILE.png`: the CLI's charts, drawn with plotters in the app's palette and
//! units (`longctx::measure::chart`), written all or nothing.

use std::path::Path;

use anyhow::{Context, bail};
use longctx::measure::chart::{Unit, series_rgb};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Pixels of a plot.
const SIZE: (u32, u32) = (960, 640);

/// Checks that `path` names an SVG or PNG file (before any work is done).
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_lowercase).as_deref() {
        Some("svg" | "png") => Ok(()),
        _ => bail!("--plot {}: the file must end in .svg or .png", path.display()),
    }
}

/// One curve: its legend label and its (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A log–log chart of `series` (x in `x_unit`, y in `y_unit`) written to `path` (SVG or PNG
/// by its extension).
pub fn log_log(
    path: &Path,
    title: &str,
    (x_unit, x_name): (Unit, &str),
    (y_unit, y_name): (Unit, &str),
    series: &[Series],
) -> anyhow::Result<()> {
    check_path(path)?;
    let points = || series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0 > 0.0 && p.1 > 0.0);
    if points().next().is_none() {
        bail!("--plot {}: nothing was measured to plot", path.display());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    // a little room around the data, on the log scale
    let (x0, x1, y0, y1) = (x0 / 1.3, x1 * 1.3, y0 / 1.5, y1 * 1.5);
    plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| anyhow::anyhow!("the plot font could not be loaded"))?;
    let bounds = (x0, x1, y0, y1);
    let bytes = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        let mut svg = String::new();
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(root, title, bounds, (x_unit, x_name), (y_unit, y_name), series)?;
        svg.into_bytes()
    } else {
        // plotters encodes PNG to a file: a scratch one, then the bytes are written atomically
        let dir = tempfile_dir()?;
        let scratch = dir.join("plot.png");
        let root = BitMapBackend::new(&scratch, SIZE).into_drawing_area();
        draw(root, title, bounds, (x_unit, x_name), (y_unit, y_name), series)?;
        let bytes = std::fs::read(&scratch).context("reading the rendered PNG")?;
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    };
    longctx::io::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("longctx-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn draw<B: DrawingBackend>(
    root: DrawingArea<B, Shift>,
    title: &str,
    (x0, x1, y0, y1): (f64, f64, f64, f64),
    (x_unit, x_name): (Unit, &str),
    (y_unit, y_name): (Unit, &str),
    series: &[Series],
) -> anyhow::Result<()>
where
    B::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow::anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(
            (x0..x1).log_scale().base(if x_unit.binary() { 2.0 } else { 10.0 }),
            (y0..y1).log_scale().base(if y_unit.binary() { 2.0 } else { 10.0 }),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("{x_name} (log scale)"))
        .y_desc(format!("{y_name} (log scale)"))
        .x_label_formatter(&|v| x_unit.format(*v))
        .y_label_formatter(&|v| y_unit.format(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for s in series {
        let [r, g, b] = series_rgb(&s.label);
        let color = RGBColor(r, g, b);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3)));
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
