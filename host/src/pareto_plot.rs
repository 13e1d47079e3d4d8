//! `lepton plot-pareto`: the cost–accuracy frontier of `cargo xtask pareto` as SVG and PNG:
//! integer accuracy against model bytes (left) and against instructions per inference (right),
//! each point labelled, the points on each front joined and filled.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct Point {
    pub name: String,
    pub model_bytes: f64,
    pub instructions_per_inference: f64,
    pub int8_accuracy: f64,
    #[serde(default)]
    pub front_bytes: bool,
    #[serde(default)]
    pub front_instructions: bool,
}

/// Read `pareto.json` and write `pareto.svg` and `pareto.png` beside it (or into `out_dir`).
pub fn plot(json: &Path, out_dir: &Path) -> Result<()> {
    let points: Vec<Point> = serde_json::from_str(&std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?).with_context(|| format!("parsing {}", json.display()))?;
    anyhow::ensure!(!points.is_empty(), "{} holds no points", json.display());
    crate::train::plot::register_font();
    draw(&points, SVGBackend::new(&out_dir.join("pareto.svg"), (1200, 500)).into_drawing_area())?;
    draw(&points, BitMapBackend::new(&out_dir.join("pareto.png"), (1200, 500)).into_drawing_area())?;
    Ok(())
}

fn draw<DB: DrawingBackend>(points: &[Point], root: DrawingArea<DB, plotters::coord::Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let min_acc = points.iter().map(|p| p.int8_accuracy).fold(1.0f64, f64::min).min(0.98) - 0.002;
    let panels: [(&DrawingArea<DB, _>, &str, fn(&Point) -> f64, fn(&Point) -> bool); 2] = [
        (&left, "model bytes (log)", |p| p.model_bytes, |p| p.front_bytes),
        (&right, "instructions per inference (log)", |p| p.instructions_per_inference, |p| p.front_instructions),
    ];
    for (area, label, x, on_front) in panels {
        let lo = points.iter().map(x).fold(f64::INFINITY, f64::min) / 1.5;
        let hi = points.iter().map(x).fold(0.0f64, f64::max) * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("int accuracy vs {}", label.trim_end_matches(" (log)")), ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), min_acc..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(label)
            .y_desc("accuracy")
            .x_labels(6)
            .x_label_formatter(&|v| human(*v))
            .y_label_formatter(&|v| format!("{:.1}%", 100.0 * v))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        let mut front: Vec<(f64, f64)> = points.iter().filter(|p| on_front(p)).map(|p| (x(p), p.int8_accuracy)).collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(LineSeries::new(front, RED.stroke_width(2))).map_err(err)?;
        for p in points {
            let style = if on_front(p) { RED.filled() } else { BLUE.mix(0.6).filled() };
            chart.draw_series(std::iter::once(Circle::new((x(p), p.int8_accuracy), 5, style))).map_err(err)?;
            chart.draw_series(std::iter::once(Text::new(p.name.clone(), (x(p), p.int8_accuracy), ("sans-serif", 11)))).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// 1.2M, 34k, 512: a tick label.
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
