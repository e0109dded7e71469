//! The run as a picture (SVG): the latency spectrum per phase (value at each percentile,
//! the tail stretched as in HdrHistogram's plots) and throughput over time.

use std::path::Path;

use plotters::prelude::*;

use crate::client::driver::RunResult;
use crate::report::Phase;
use crate::report::summary::spectrum;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// Only SVG is built in, to keep the build lean.
    #[error("{0}: only .svg plots are supported")]
    Format(String),
    #[error("drawing the plot: {0}")]
    Draw(String),
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// x of quantile q: "nines", so 90% → 1, 99% → 2, 99.9% → 3.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-6).log10()
}

const PLOTTED: [Phase; 5] = [Phase::Transaction, Phase::DataEnd, Phase::Rcpt, Phase::Mail, Phase::Connect];

pub fn write_svg(r: &RunResult, path: &Path, title: &str) -> Result<(), PlotError> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        return Err(PlotError::Format(path.display().to_string()));
    }
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(draw_err)?;
    let (left, right) = root.split_horizontally(640);

    let series: Vec<(Phase, Vec<(f64, f64)>)> =
        PLOTTED.iter().map(|&p| (p, spectrum(r.recorder.histogram(p)))).filter(|(_, s)| !s.is_empty()).collect();
    let ymax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(0.0, f64::max) / 1000.0;
    let xmax = series.iter().map(|(p, _)| r.recorder.histogram(*p).len()).max().unwrap_or(1).max(10) as f64;
    let xmax = xmax.log10().clamp(1.0, 5.0);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..(ymax * 1.05).max(0.001))
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(6)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 { format!("{p:.0}%") } else { format!("{p:.3}%").trim_end_matches('0').to_string() }
        })
        .draw()
        .map_err(draw_err)?;
    for (i, (phase, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> =
            points.iter().filter(|(q, _)| nines(*q) <= xmax).map(|&(q, us)| (nines(q), us / 1000.0)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(draw_err)?
            .label(phase.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;

    let tmax = r.timeline.last().map_or(1.0, |t| t.t.as_secs_f64()).max(1.0);
    let rmax = r.timeline.iter().map(|t| t.ok.max(t.failed)).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&right)
        .caption("throughput", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..rmax * 1.1)
        .map_err(draw_err)?;
    chart.configure_mesh().x_desc("seconds").y_desc("messages/s").draw().map_err(draw_err)?;
    let ok: Vec<(f64, f64)> = r.timeline.iter().map(|t| (t.t.as_secs_f64(), t.ok as f64)).collect();
    let failed: Vec<(f64, f64)> = r.timeline.iter().map(|t| (t.t.as_secs_f64(), t.failed as f64)).collect();
    chart
        .draw_series(LineSeries::new(ok, BLUE.stroke_width(2)))
        .map_err(draw_err)?
        .label("accepted")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if failed.iter().any(|p| p.1 > 0.0) {
        chart
            .draw_series(LineSeries::new(failed, RED.stroke_width(2)))
            .map_err(draw_err)?
            .label("failed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}
