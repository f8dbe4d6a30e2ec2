//! The charts of report.html, drawn by `plotters` into SVG strings to inline in the page.
//!
//! Axes, ticks, labels and legends are plotters' job; this module only says what to draw. The SVG
//! backend is used without font features: it writes `<text>` that the browser lays out, and sizes
//! labels with plotters' built-in estimate, so the report needs no system fonts to build and no
//! network to view. Legends have a column of their own, right of the plot, where they cannot hide
//! a line.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::bins::Binned;
use super::timeline::Series;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 280;
const FONT: &str = "sans-serif";

/// One colour per region, in order (then again from the start).
pub const COLORS: [RGBColor; 6] = [
    RGBColor(0x3b, 0x7d, 0xd8),
    RGBColor(0xd8, 0x74, 0x3b),
    RGBColor(0x3b, 0xb2, 0x73),
    RGBColor(0xb2, 0x3b, 0xb2),
    RGBColor(0xc9, 0xb1, 0x2f),
    RGBColor(0x55, 0x55, 0x55),
];

/// The colour of a histogram's open-ended last bin (see [`Binned::open_tail`]).
pub const TAIL_COLOR: RGBColor = RGBColor(0x80, 0x80, 0x80);

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("drawing a chart: {0}")]
    Draw(String),
}

fn draw_err(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Renders `draw` onto a fresh white SVG canvas and returns the SVG.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), ChartError>,
) -> Result<String, ChartError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// Milliseconds with as many decimals as their size needs.
pub fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.2}")
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Axis labels with one number of decimals along an axis spanning `span`, enough for the ticks
/// plotters puts on it (about ten).
fn axis_format(span: f64) -> impl Fn(&f64) -> String {
    let step = span / 10.0;
    let decimals = if step >= 1.0 || step <= 0.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    move |v: &f64| format!("{v:.decimals$}")
}

/// A histogram of latencies: one bar per bin with samples, in `color` (the open tail in grey).
pub fn histogram(b: &Binned, x_desc: &str, color: RGBColor) -> Result<String, ChartError> {
    let (Some(first), Some(last)) = (b.bins.first(), b.bins.last()) else {
        return Ok(String::new());
    };
    let top = b.bins.iter().map(|x| x.count).max().unwrap_or(0);
    let fmt_x = axis_format(last.to_ms - first.from_ms);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(first.from_ms..last.to_ms, 0u64..(top + top / 10).max(1))
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc("deliveries")
            .x_label_formatter(&fmt_x)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        let last_index = b.bins.len() - 1;
        chart
            .draw_series(
                b.bins
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.count > 0)
                    .map(|(i, x)| {
                        let fill = if b.open_tail && i == last_index {
                            TAIL_COLOR
                        } else {
                            color
                        };
                        let mut bar =
                            Rectangle::new([(x.from_ms, 0), (x.to_ms, x.count)], fill.filled());
                        bar.set_margin(0, 0, 1, 1);
                        bar
                    }),
            )
            .map_err(draw_err)?;
        Ok(())
    })
}

/// A line per series over the seconds `seconds` (a marker on every point), with its legend in a
/// column to the right of the plot area.
pub fn lines(series: &[Series], seconds: Range<u64>, y_desc: &str) -> Result<String, ChartError> {
    if seconds.is_empty() {
        return Ok(String::new());
    }
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if top > 0.0 { top * 1.15 } else { 1.0 };
    // Half a second of room either side, so the first and last markers clear the axes, and no
    // more ticks than seconds, so that every tick is a whole second.
    let x = (seconds.start as f64 - 0.5)..(seconds.end as f64 - 0.5);
    let ticks = (seconds.end - seconds.start + 1).min(12) as usize;
    let fmt_x = |v: &f64| format!("{v:.0}");
    let fmt_y = axis_format(y_max);
    let longest = series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let legend_width = (40 + 8 * longest as u32).clamp(100, WIDTH / 3);
    svg(|root| {
        let (plot, legend) = root.split_horizontally(WIDTH - legend_width);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x, 0.0..y_max)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the load generator started")
            .y_desc(y_desc)
            .x_labels(ticks)
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .light_line_style(WHITE)
            .draw()
            .map_err(draw_err)?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts = || s.points.iter().map(|&(sec, v)| (sec as f64, v));
            chart
                .draw_series(LineSeries::new(pts(), color.stroke_width(2)))
                .map_err(draw_err)?;
            chart
                .draw_series(pts().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
            // The legend: a swatch and the name, one row per series.
            let y = 24 + 20 * i as i32;
            legend
                .draw(&Rectangle::new([(4, y - 5), (16, y + 5)], color.filled()))
                .map_err(draw_err)?;
            let style =
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            legend
                .draw(&Text::new(s.name.as_str(), (22, y), style))
                .map_err(draw_err)?;
        }
        Ok(())
    })
}
