//! Plots as PNG beside their SVG: resvg renders plotters' SVG with the system's fonts (plotters'
//! own bitmap text needs a font stack we do not build). Shared by the benchmarks that draw plots
//! (`apply_rate` here, `api` in wallet-api, which includes this file by path).

use std::path::Path;

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
