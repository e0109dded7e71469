//! The run as a picture, SVG or PNG: the latency spectrum per phase (value at each
//! percentile, the tail stretched as in HdrHistogram's plots) and throughput over time.
//!
//! # Fonts
//!
//! plotters lays text out with font metrics (its `ab_glyph` backend, which loads no system
//! font by itself). A PNG needs real glyphs: a TrueType font is loaded at run time from the
//! usual Debian locations ([`FONT_CANDIDATES`]); none is shipped. In an SVG the viewer draws
//! the text, so only widths are needed: [`metrics_face`] builds a face with metrics and no
//! outlines, so SVG plots work on machines without any font (and come out the same on all).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::client::driver::RunResult;
use crate::report::Phase;
use crate::report::summary::spectrum;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The file name asks for a format other than SVG or PNG.
    #[error("{0}: the plot is written as .svg or .png")]
    Format(String),
    /// A PNG needs a TrueType font for its text and none of the usual ones is installed.
    #[error(
        "no TrueType font for the PNG's text (looked for {looked}): install Debian's fonts-dejavu-core, or write an .svg plot"
    )]
    NoFont { looked: String },
    /// A font file that cannot be read or parsed.
    #[error("{path}: {reason}")]
    Font { path: String, reason: String },
    /// Writing the PNG file.
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
    #[error("drawing the plot: {0}")]
    Draw(String),
}

/// TrueType fonts the PNG's text may use, in order of preference, with the Debian package
/// that installs each.
pub const FONT_CANDIDATES: [(&str, &str); 5] = [
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
    ("/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf", "fonts-liberation2"),
    ("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", "fonts-liberation"),
    ("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf", "fonts-noto-core"),
    ("/usr/share/fonts/truetype/freefont/FreeSans.ttf", "fonts-freefont-ttf"),
];

/// The first of `candidates` that exists.
pub fn find_font<'a>(candidates: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file()).map(Path::to_path_buf)
}

/// The family the plots are drawn with; plotters also uses it for its default styles.
/// The SVG names it for the viewer; the face registered under it is the metrics-only one
/// while an SVG is drawn and the system font while a PNG is.
const FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;

/// Checks that a plot can be written to `path` (its format, and for a PNG a font), so
/// that a run does not end in a plot that cannot be drawn.
pub fn check(path: &Path) -> Result<(), PlotError> {
    face(path).map(|_| ())
}

/// Writes the plot as SVG or PNG, by the extension of `path`.
pub fn write(r: &RunResult, path: &Path, title: &str) -> Result<(), PlotError> {
    let (format, face) = face(path)?;
    with_face(face, || match format {
        Format::Svg => draw(SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area(), r, title),
        Format::Png => write_png(r, path, title),
    })
}

enum Format {
    Svg,
    Png,
}

/// The format `path` asks for and the face to draw its text with.
fn face(path: &Path) -> Result<(Format, &'static [u8]), PlotError> {
    static METRICS: OnceLock<&'static [u8]> = OnceLock::new();
    static SYSTEM: OnceLock<Result<&'static [u8], PlotError>> = OnceLock::new();
    // plotters keeps the bytes for the life of the process.
    let leak = |b: Vec<u8>| -> &'static [u8] { Box::leak(b.into_boxed_slice()) };
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => Ok((Format::Svg, *METRICS.get_or_init(|| leak(metrics_face())))),
        Some("png") => Ok((Format::Png, SYSTEM.get_or_init(|| load_system_font().map(leak)).clone()?)),
        _ => Err(PlotError::Format(path.display().to_string())),
    }
}

/// Draws with `face` registered as [`FAMILY`] in plotters' (process-wide) font table; one
/// plot at a time, since the face differs by format.
fn with_face(face: &'static [u8], draw: impl FnOnce() -> Result<(), PlotError>) -> Result<(), PlotError> {
    static DRAWING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = DRAWING.lock().unwrap_or_else(|e| e.into_inner());
    plotters::style::register_font(FAMILY, FontStyle::Normal, face)
        .map_err(|_| PlotError::Font { path: FAMILY.into(), reason: "not a TrueType font".into() })?;
    draw()
}

fn load_system_font() -> Result<Vec<u8>, PlotError> {
    let path = find_font(FONT_CANDIDATES.iter().map(|(p, _)| Path::new(p))).ok_or_else(|| PlotError::NoFont {
        looked: FONT_CANDIDATES.iter().map(|(p, pkg)| format!("{p} ({pkg})")).collect::<Vec<_>>().join(", "),
    })?;
    std::fs::read(&path).map_err(|e| PlotError::Font { path: path.display().to_string(), reason: e.to_string() })
}

fn write_png(r: &RunResult, path: &Path, title: &str) -> Result<(), PlotError> {
    let mut rgb = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area(), r, title)?;
    let write_err =
        |e: &dyn std::fmt::Display| PlotError::Write { path: path.display().to_string(), reason: e.to_string() };
    let file = std::fs::File::create(path).map_err(|e| write_err(&e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| write_err(&e))?;
    w.write_image_data(&rgb).map_err(|e| write_err(&e))?;
    w.finish().map_err(|e| write_err(&e))
}

/// A TrueType face with metrics only, for laying out an SVG's text: every character is
/// one glyph without an outline, 0.5 em wide (about the average of a sans-serif), with
/// DejaVu Sans's ascent and descent. The tables are the four a face cannot do without:
/// `head`, `hhea`, `hmtx` and `maxp`.
pub fn metrics_face() -> Vec<u8> {
    const UNITS_PER_EM: u16 = 2048;
    const ADVANCE: u16 = 1024;
    let be16 = |v: u16| v.to_be_bytes();
    let mut head = Vec::with_capacity(54);
    head.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // version 1.0
    head.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // font revision
    head.extend_from_slice(&0u32.to_be_bytes()); // checksum adjustment
    head.extend_from_slice(&0x5F0F_3CF5u32.to_be_bytes()); // magic
    head.extend_from_slice(&be16(0)); // flags
    head.extend_from_slice(&be16(UNITS_PER_EM));
    head.extend_from_slice(&[0; 16]); // created, modified
    head.extend_from_slice(&[0; 8]); // bounding box
    head.extend_from_slice(&be16(0)); // mac style
    head.extend_from_slice(&be16(8)); // lowest readable size
    head.extend_from_slice(&be16(2)); // direction hint
    head.extend_from_slice(&be16(0)); // short loca offsets
    head.extend_from_slice(&be16(0)); // glyph data format
    let mut hhea = Vec::with_capacity(36);
    hhea.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    for v in [1901i16, -483, 0] {
        hhea.extend_from_slice(&v.to_be_bytes()); // ascender, descender, line gap
    }
    hhea.extend_from_slice(&be16(ADVANCE)); // widest advance
    hhea.extend_from_slice(&[0; 6]); // min left/right side bearing, max extent
    hhea.extend_from_slice(&be16(1)); // caret slope rise
    hhea.extend_from_slice(&[0; 14]); // caret run and offset, reserved, metric data format
    hhea.extend_from_slice(&be16(1)); // one horizontal metric, for every glyph
    let hmtx = [be16(ADVANCE), be16(0)].concat();
    let maxp = [0x0000_5000u32.to_be_bytes().as_slice(), &be16(1)].concat(); // version 0.5, one glyph
    // The table directory, tags in ascending order as readers search it.
    let tables: [(&[u8; 4], &[u8]); 4] = [(b"head", &head), (b"hhea", &hhea), (b"hmtx", &hmtx), (b"maxp", &maxp)];
    let mut out = Vec::new();
    out.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    out.extend_from_slice(&be16(tables.len() as u16));
    out.extend_from_slice(&[be16(64), be16(2), be16(0)].concat()); // search range, selector, shift
    let mut offset = 12 + 16 * tables.len();
    for (tag, data) in &tables {
        out.extend_from_slice(*tag);
        out.extend_from_slice(&0u32.to_be_bytes()); // checksum (not checked by readers)
        out.extend_from_slice(&(offset as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        offset += data.len().next_multiple_of(4);
    }
    for (_, data) in &tables {
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// x of quantile q: "nines", so 90% → 1, 99% → 2, 99.9% → 3.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-6).log10()
}

const PLOTTED: [Phase; 5] = [Phase::Transaction, Phase::DataEnd, Phase::Rcpt, Phase::Mail, Phase::Connect];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult, title: &str) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root.titled(title, (FAMILY, 20)).map_err(draw_err)?;
    let (left, right) = root.split_horizontally(640);

    let series: Vec<(Phase, Vec<(f64, f64)>)> =
        PLOTTED.iter().map(|&p| (p, spectrum(r.recorder.histogram(p)))).filter(|(_, s)| !s.is_empty()).collect();
    let ymax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(0.0, f64::max) / 1000.0;
    let xmax = series.iter().map(|(p, _)| r.recorder.histogram(*p).len()).max().unwrap_or(1).max(10) as f64;
    let xmax = xmax.log10().clamp(1.0, 5.0);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile", (FAMILY, 16))
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
            if p < 99.0 {
                format!("{p:.0}%")
            } else {
                format!("{}%", format!("{p:.3}").trim_end_matches('0').trim_end_matches('.'))
            }
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
        .caption("throughput", (FAMILY, 16))
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::client::driver::Tick;
    use crate::report::Recorder;

    fn run_result() -> RunResult {
        let mut recorder = Recorder::default();
        for i in 1..=1000u64 {
            let d = Duration::from_micros(100 + i * i % 5000);
            for phase in [Phase::Connect, Phase::Mail, Phase::Rcpt, Phase::DataEnd] {
                recorder.phase(phase, d);
            }
            recorder.transaction(true, d * 2, 1000, 1);
        }
        let timeline = (1..=5)
            .map(|s| Tick {
                t: Duration::from_secs(s),
                ok: 200,
                failed: s % 2,
                p50_us: 300,
                p99_us: 900,
                total_ok: 200 * s,
                total_failed: s / 2,
            })
            .collect();
        RunResult {
            recorder,
            started: SystemTime::now(),
            elapsed: Duration::from_secs(5),
            cpu: Duration::from_secs(1),
            timeline,
            threads: 1,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loadgen-plot-{}-{name}", std::process::id()))
    }

    #[test]
    fn an_svg_needs_no_installed_font() {
        let face: &'static [u8] = Box::leak(metrics_face().into_boxed_slice());
        assert!(plotters::style::register_font("metrics-face-test", FontStyle::Normal, face).is_ok());
        let path = tmp("plot.svg");
        write(&run_result(), &path, "ringmx-loadgen → test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(svg.starts_with("<svg") && svg.contains("latency by percentile") && svg.contains("99.9%"));
        assert!(svg.contains(r#"font-family="sans-serif""#));
    }

    #[test]
    fn a_png_has_its_signature_and_size() {
        let Some(font) = find_font(FONT_CANDIDATES.iter().map(|(p, _)| Path::new(p))) else {
            eprintln!("skipped: no TrueType font installed (apt-get install fonts-dejavu-core)");
            return;
        };
        let path = tmp("plot.png");
        write(&run_result(), &path, "ringmx-loadgen → test").unwrap();
        let png = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&png[12..16], b"IHDR");
        let be32 = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
        assert_eq!((be32(16), be32(20)), (WIDTH, HEIGHT));
        // Text, axes and curves on white: far more than an empty image compresses to.
        assert!(png.len() > 10_000, "{} bytes with {}", png.len(), font.display());
    }

    #[test]
    fn without_a_font_the_error_names_the_package_and_svg() {
        assert_eq!(find_font([Path::new("/nonexistent/font.ttf")]), None);
        let e = PlotError::NoFont { looked: "/nonexistent/font.ttf (fonts-dejavu-core)".into() }.to_string();
        assert!(e.contains("fonts-dejavu-core") && e.contains(".svg"), "{e}");
    }

    #[test]
    fn other_formats_are_refused() {
        let e = write(&run_result(), &tmp("plot.jpg"), "t").unwrap_err();
        assert!(matches!(e, PlotError::Format(_)), "{e}");
    }
}
