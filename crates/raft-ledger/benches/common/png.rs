//! Plots as PNG beside their SVG: resvg renders plotters' SVG with the system's fonts (plotters'
//! own bitmap text needs a font stack we do not build). Shared by the benchmarks that draw plots
//! (`apply_rate` here, `api` in wallet-api, which includes this file by path).

use std::ops::Range;
use std::path::{Path, PathBuf};

pub(crate) type Error = Box<dyn std::error::Error>;

/// The system's fonts, with a sans-serif family the plots' text can use (fontdb assumes Arial,
/// which a Debian machine does not have).
pub(crate) fn fonts() -> resvg::usvg::Options<'static> {
    let mut options = resvg::usvg::Options::default();
    let db = options.fontdb_mut();
    db.load_system_fonts();
    let sans = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
        .into_iter()
        .find(|family| db.faces().any(|f| f.families.iter().any(|(name, _)| name == family)));
    match sans {
        Some(family) => db.set_sans_serif_family(family),
        None => eprintln!("no sans-serif font found: the PNG plots will have no text (the SVGs do)"),
    }
    options
}

/// Renders one SVG plot to PNG at its own size.
pub(crate) fn to_png(svg: &Path, png: &Path, options: &resvg::usvg::Options) -> Result<(), Error> {
    let tree = resvg::usvg::Tree::from_data(&std::fs::read(svg)?, options)?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("an SVG plot of no size")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.save_png(png)?;
    Ok(())
}

/// The charts both benchmarks draw: a log-scale x axis and a linear y axis, as SVG.
pub(crate) type Chart<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::backend::SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::combinators::LogCoord<f64>,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// Draws one series as a line with its points marked, in the `i`th colour, with its legend.
pub(crate) fn series(chart: &mut Chart<'_, '_>, pts: Vec<(f64, f64)>, label: &str, i: usize) -> Result<(), Error> {
    use plotters::prelude::*;
    let color = Palette99::pick(i).to_rgba();
    chart
        .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    Ok(())
}

/// What a chart shows: where it goes, its caption, axes and their labels.
pub(crate) struct Frame<'a> {
    pub(crate) svg: PathBuf,
    pub(crate) caption: &'a str,
    /// The x range, drawn on a log scale.
    pub(crate) x: Range<f64>,
    /// The top of the linear y axis (it starts at 0).
    pub(crate) y_top: f64,
    pub(crate) x_desc: &'a str,
    pub(crate) y_desc: &'a str,
    /// How x labels are written (plotters' default without one).
    pub(crate) x_labels: Option<&'a dyn Fn(&f64) -> String>,
}

/// Draws one chart as SVG (the series by `draw`, with a legend) and renders it to PNG beside
/// it; returns the PNG's path.
pub(crate) fn chart(
    frame: Frame<'_>,
    fonts: &resvg::usvg::Options,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    use plotters::prelude::*;
    {
        let root = SVGBackend::new(&frame.svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(frame.caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(frame.x.log_scale(), 0.0..frame.y_top)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(frame.x_desc).y_desc(frame.y_desc);
        if let Some(labels) = frame.x_labels {
            mesh.x_label_formatter(labels);
        }
        mesh.draw()?;
        draw(&mut chart)?;
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
    }
    let png = frame.svg.with_extension("png");
    to_png(&frame.svg, &png, fonts)?;
    Ok(png)
}
