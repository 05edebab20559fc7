//! `--plot FILE.svg|FILE.png`: the CLI's charts, drawn with plotters in the app's palette and
//! units (`longctx::measure::chart`), written all or nothing.

use std::path::Path;

use anyhow::{Context, bail};
use longctx::measure::chart::{Axis, ChartData, Mark, Scale, Unit};
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

/// `chart` (both axes logarithmic) written to `path` as SVG or PNG by its extension, in
/// the series' colours and marks.
pub fn log_log(path: &Path, chart: &ChartData) -> anyhow::Result<()> {
    check_path(path)?;
    if chart.x.scale != Scale::Log || chart.y.scale != Scale::Log {
        bail!("--plot {}: only log-log charts are drawn", path.display());
    }
    let points =
        || chart.series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p[0] > 0.0 && p[1] > 0.0);
    if points().next().is_none() {
        bail!("--plot {}: nothing was measured to plot", path.display());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for [x, y] in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    // a little room around the data, on the log scale
    let bounds = (x0 / 1.3, x1 * 1.3, y0 / 1.5, y1 * 1.5);
    plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| anyhow::anyhow!("the plot font could not be loaded"))?;
    let bytes = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        let mut svg = String::new();
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(root, chart, bounds)?;
        svg.into_bytes()
    } else {
        // plotters encodes PNG to a file: a scratch one, then the bytes are written atomically
        let dir = tempfile_dir()?;
        let scratch = dir.join("plot.png");
        let root = BitMapBackend::new(&scratch, SIZE).into_drawing_area();
        draw(root, chart, bounds)?;
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
    chart_data: &ChartData,
    (x0, x1, y0, y1): (f64, f64, f64, f64),
) -> anyhow::Result<()>
where
    B::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow::anyhow!("drawing the plot: {e}");
    let (x, y) = (&chart_data.x, &chart_data.y);
    let base = |a: &Axis| if a.unit.is_some_and(Unit::binary) { 2.0 } else { 10.0 };
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&chart_data.title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d((x0..x1).log_scale().base(base(x)), (y0..y1).log_scale().base(base(y)))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x.title())
        .y_desc(y.title())
        .x_label_formatter(&|v| x.format(*v))
        .y_label_formatter(&|v| y.format(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for s in &chart_data.series {
        let [r, g, b] = s.rgb;
        let color = RGBColor(r, g, b);
        let pts = s.points.iter().filter(|p| p[0] > 0.0 && p[1] > 0.0).map(|p| (p[0], p[1]));
        let anno = match s.mark {
            Mark::Dashed => chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, color.stroke_width(2)))
                .map_err(err)?,
            Mark::Points => {
                chart.draw_series(pts.clone().map(|p| Circle::new(p, 4, color.filled()))).map_err(err)?
            }
            _ => chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(err)?,
        };
        anno.label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3)));
        if matches!(s.mark, Mark::LinePoints | Mark::Dashed) {
            chart.draw_series(pts.map(|p| Circle::new(p, 4, color.filled()))).map_err(err)?;
        }
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
