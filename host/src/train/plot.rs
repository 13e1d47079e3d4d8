//! Training curves as SVG and PNG (plotters, with an embedded font: no system libraries).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::trainer::EpochMetrics;

static FONT: Once = Once::new();

pub(crate) fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Loss (left) and accuracy (right) per epoch, written to both files.
pub fn training_curves(epochs: &[EpochMetrics], svg: &Path, png: &Path) -> Result<()> {
    register_font();
    draw(epochs, SVGBackend::new(svg, (1000, 420)).into_drawing_area())?;
    draw(epochs, BitMapBackend::new(png, (1000, 420)).into_drawing_area())?;
    Ok(())
}

fn draw<DB: DrawingBackend>(epochs: &[EpochMetrics], root: DrawingArea<DB, plotters::coord::Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    let last = epochs.len().max(1) as f64;
    let series = |f: fn(&EpochMetrics) -> f64| epochs.iter().map(move |m| (m.epoch as f64, f(m))).collect::<Vec<_>>();

    let max_loss = epochs.iter().flat_map(|m| [m.train_loss, m.test_loss]).fold(0.0f64, f64::max).max(0.01) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..last + 0.5, 0.0..max_loss)
        .map_err(err)?;
    chart.configure_mesh().x_desc("epoch").label_style(("sans-serif", 14)).draw().map_err(err)?;
    chart.draw_series(LineSeries::new(series(|m| m.train_loss), &BLUE)).map_err(err)?.label("train").legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE));
    chart.draw_series(LineSeries::new(series(|m| m.test_loss), &RED)).map_err(err)?.label("test").legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED));
    chart.configure_series_labels().label_font(("sans-serif", 14)).border_style(BLACK).draw().map_err(err)?;

    let min_acc = epochs.iter().flat_map(|m| [m.train_accuracy, m.test_accuracy]).fold(1.0f64, f64::min).min(0.97);
    let mut chart = ChartBuilder::on(&right)
        .caption("accuracy", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..last + 0.5, min_acc..1.0)
        .map_err(err)?;
    chart.configure_mesh().x_desc("epoch").label_style(("sans-serif", 14)).draw().map_err(err)?;
    chart.draw_series(LineSeries::new(series(|m| m.train_accuracy), &BLUE)).map_err(err)?.label("train").legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE));
    chart.draw_series(LineSeries::new(series(|m| m.test_accuracy), &RED)).map_err(err)?.label("test").legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED));
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).label_font(("sans-serif", 14)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
