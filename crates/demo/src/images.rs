//! Step 1: the sample image and its modified copy, built in memory from the blobs and the
//! static sample app (no container image, no cargo).

use crate::error::{err, DemoError, DemoResult};
use cloister_cpio::CpioWriter;
use cloister_eif::{EifBuilder, Measurements};
use cloister_image_builder::blobs;
use cloister_sample_app::DEFAULT_PORT;
use std::path::{Path, PathBuf};

/// The demo images.
#[derive(Debug)]
pub(crate) struct Images {
    pub(crate) genuine: PathBuf,
    pub(crate) modified: PathBuf,
    pub(crate) genuine_pcrs: Measurements,
    pub(crate) modified_pcrs: Measurements,
    pub(crate) kernel_note: String,
}

/// Builds `sample.eif` and `modified.eif` (one env line differs) in `dir`.
pub(crate) fn build_images(dir: &Path, blobs: &blobs::Blobs, app: &Path) -> DemoResult<Images> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| err(DemoError::Images, format!("{}: {e}", p.display())))
    };
    let app = read(app)?;
    let (kernel, kernel_note) = match &blobs.kernel {
        Some(k) => (
            read(k)?,
            format!(
                "{} with {} module(s) in the bootstrap ramdisk",
                k.display(),
                blobs.modules.len()
            ),
        ),
        None => (
            Vec::new(),
            "empty (the blobs have no kernel; process isolation boots none)".to_owned(),
        ),
    };
    let cmdline = blobs.cmdline.clone();
    let boot = cloister_image_builder::build::write_bootstrap_ramdisk(blobs, 0, Vec::new())
        .map_err(|e| err(DemoError::Images, format!("bootstrap ramdisk: {e}")))?;
    let build = |name: &str, env: &str| -> DemoResult<(PathBuf, Measurements)> {
        let cmd = format!("/sample-app\nserve\n{DEFAULT_PORT}\n");
        let user = ramdisk(|w| {
            w.file("cmd", 0o644, 0, 0, cmd.len() as u64, cmd.as_bytes())?;
            w.file("env", 0o644, 0, 0, env.len() as u64, env.as_bytes())?;
            w.dir("rootfs", 0o755, 0, 0)?;
            w.dir("rootfs/tmp", 0o1777, 0, 0)?;
            w.file("rootfs/sample-app", 0o755, 0, 0, app.len() as u64, &app[..])?;
            Ok(())
        })?;
        let path = dir.join(name);
        let m = EifBuilder::new()
            .kernel_bytes(kernel.clone())
            .cmdline(cmdline.clone())
            .ramdisk_bytes(boot.clone())
            .ramdisk_bytes(user)
            .write_to_path(&path)
            .map_err(|e| err(DemoError::Images, format!("{}: {e}", path.display())))?;
        Ok((path, m))
    };
    let (genuine, genuine_pcrs) = build("sample.eif", "DEMO_IMAGE=genuine\n")?;
    let (modified, modified_pcrs) = build("modified.eif", "DEMO_IMAGE=modified\n")?;
    Ok(Images {
        genuine,
        modified,
        genuine_pcrs,
        modified_pcrs,
        kernel_note,
    })
}

fn ramdisk(
    fill: impl FnOnce(&mut CpioWriter<Vec<u8>>) -> Result<(), cloister_cpio::WriteError>,
) -> DemoResult<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    fill(&mut w).map_err(|e| err(DemoError::Images, format!("ramdisk: {e}")))?;
    w.finish()
        .map_err(|e| err(DemoError::Images, format!("ramdisk: {e}")))
}

/// Prints an image's PCR0-2.
pub(crate) fn print_pcrs(name: &str, m: &Measurements) {
    println!("  {name}");
    println!("    PCR0 {}", m.pcr0_hex());
    println!("    PCR1 {}", m.pcr1_hex());
    println!("    PCR2 {}", m.pcr2_hex());
}
