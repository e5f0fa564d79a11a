//! `bench.svg`: four panels of horizontal bars (one bar per system, coloured
//! by group, whiskers = min–max of the repetition medians, log scale):
//! 64 B round trip (bytes and typed), 64 B messages/s, 1 MiB GB/s.

use std::path::Path;

use plotters::prelude::*;

use crate::plan::{Group, Kind, System, Workload};
use crate::report::{groups_in, CaseResult, Meta, Outcome};
use crate::{err, Res};

fn colour(g: Group) -> RGBColor {
    match g {
        Group::Raw => RGBColor(128, 128, 128),
        Group::Conduit => RGBColor(31, 119, 180),
        Group::IpcChannel => RGBColor(255, 127, 14),
        Group::Interprocess => RGBColor(44, 160, 44),
        Group::Iceoryx2 => RGBColor(214, 39, 40),
        Group::Python => RGBColor(148, 103, 189),
    }
}

/// The value in the panel's unit.
fn scale(w: Workload, v: f64) -> f64 {
    match w.kind() {
        Kind::Latency => v * 1e6,
        Kind::Rate => v / 1e6,
        Kind::Bandwidth => v / 1e9,
    }
}

fn caption(w: Workload) -> &'static str {
    match w {
        Workload::Rtt => "64 B round trip, Vec<u8> — µs, lower is better",
        Workload::RttTyped => "64 B round trip, typed — µs, lower is better",
        Workload::Msgs => "64 B one-way, Vec<u8> — million msg/s, higher is better",
        Workload::Bulk1M => "1 MiB one-way — GB/s, higher is better",
        _ => w.title(),
    }
}

fn label(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A bar: group, label, median, min, max (in the panel's unit).
type Bar = (Group, String, f64, f64, f64);

/// Draws the plot to `path`.
pub fn svg(systems: &[System], results: &[CaseResult], meta: &Meta, path: &Path) -> Res<()> {
    let panels = [
        Workload::Rtt,
        Workload::RttTyped,
        Workload::Msgs,
        Workload::Bulk1M,
    ];
    let bars_of = |w: Workload| -> Vec<Bar> {
        results
            .iter()
            .filter(|r| r.workload == w)
            .filter_map(|r| match &r.outcome {
                Outcome::Done(s) => {
                    let sys = &systems[r.system];
                    Some((
                        sys.group,
                        sys.label.clone(),
                        scale(w, s.median),
                        scale(w, s.min),
                        scale(w, s.max),
                    ))
                }
                _ => None,
            })
            .filter(|b| b.2.is_finite() && b.2 > 0.0)
            .collect()
    };
    let rows = panels
        .iter()
        .map(|&w| bars_of(w).len())
        .max()
        .unwrap_or(1)
        .max(1);
    let panel_h = 90 + 26 * rows as u32;
    let (width, height) = (1400u32, 70 + 2 * panel_h);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let title = format!(
        "conduit-bench, {} ({} run) — {}",
        crate::report::utc_date(),
        meta.mode,
        meta.pinning.split(';').next().unwrap_or("")
    );
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| err(e.to_string()))?;
    let (legend_area, body) = root.split_vertically(30);
    draw_legend(&legend_area, &groups_in(systems, results))?;
    let areas = body.split_evenly((2, 2));
    for (area, &w) in areas.iter().zip(panels.iter()) {
        let bars = bars_of(w);
        if bars.is_empty() {
            area.draw(&Text::new(
                format!("{}: not measured", w.title()),
                (20, 30),
                ("sans-serif", 16),
            ))
            .map_err(|e| err(e.to_string()))?;
            continue;
        }
        draw_panel(area, w, &bars)?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    groups: &[Group],
) -> Res<()> {
    let mut x = 20;
    for &g in groups {
        area.draw(&Rectangle::new([(x, 8), (x + 16, 22)], colour(g).filled()))
            .map_err(|e| err(e.to_string()))?;
        area.draw(&Text::new(g.name(), (x + 22, 9), ("sans-serif", 15)))
            .map_err(|e| err(e.to_string()))?;
        x += 40 + 9 * g.name().len() as i32;
    }
    area.draw(&Text::new(
        "bar = median of the repetition medians, whisker = min–max, log scale",
        (x + 20, 9),
        ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
    ))
    .map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    w: Workload,
    bars: &[Bar],
) -> Res<()> {
    let lo_v = bars
        .iter()
        .map(|b| b.3.min(b.2))
        .fold(f64::INFINITY, f64::min);
    let hi_v = bars.iter().map(|b| b.4.max(b.2)).fold(0.0, f64::max);
    let lo = 10f64.powf((lo_v * 0.8).log10().floor());
    let hi = 10f64.powf((hi_v * 2.5).log10().ceil());
    let n = bars.len() as i32;
    let names: Vec<String> = bars.iter().map(|b| b.1.clone()).collect();
    // The first system at the top.
    let row = |i: usize| n - 1 - i as i32;
    let mut chart = ChartBuilder::on(area)
        .caption(caption(w), ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(150)
        .build_cartesian_2d((lo..hi).log_scale(), (0..(n - 1).max(1)).into_segmented())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                let idx = (n - 1 - *i) as usize;
                names.get(idx).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_label_formatter(&|x| label(*x))
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, b) in bars.iter().enumerate() {
        let y = row(i);
        let mut rect = Rectangle::new(
            [
                (lo, SegmentValue::Exact(y)),
                (b.2, SegmentValue::Exact(y + 1)),
            ],
            colour(b.0).filled(),
        );
        rect.set_margin(4, 4, 0, 0);
        chart
            .draw_series(std::iter::once(rect))
            .map_err(|e| err(e.to_string()))?;
        if b.4 > b.3 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (b.3, SegmentValue::CenterOf(y)),
                        (b.4, SegmentValue::CenterOf(y)),
                    ],
                    BLACK.stroke_width(1),
                )))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {}", label(b.2)),
                (b.4.max(b.2), SegmentValue::CenterOf(y)),
                TextStyle::from(("sans-serif", 12).into_font()).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Left,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                ),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}
