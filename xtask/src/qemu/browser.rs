//! node1's status page in a real browser: headless Chromium (Debian's
//! `chromium`) loads the page node1 served, saves a screenshot and gives
//! back the document it built, whose text the boot test checks.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The program, and the Debian package that has it.
pub(crate) const CHROMIUM: &str = "chromium";
pub(crate) const CHROMIUM_PACKAGE: &str = "chromium";

/// Renders the page at `url` into `png` and returns the text of the
/// document Chromium built.
pub(crate) fn render(url: &str, png: &Path, scratch: &Path) -> Result<String> {
    let profile = scratch.join("chromium-profile");
    let run = |action: &str| -> Result<Vec<u8>> {
        let out = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(action)
            .arg(url)
            .output()
            .with_context(|| format!("running {CHROMIUM}: is {CHROMIUM_PACKAGE} installed?"))?;
        if !out.status.success() {
            bail!(
                "{CHROMIUM} {action} {url} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
        Ok(out.stdout)
    };
    let _ = std::fs::remove_file(png);
    run(&format!("--screenshot={}", png.display()))?;
    let shot = std::fs::read(png)
        .with_context(|| format!("{CHROMIUM} wrote no screenshot at {}", png.display()))?;
    if !shot.starts_with(b"\x89PNG\r\n\x1a\n") || shot.len() < 1000 {
        bail!(
            "{} is not a screenshot ({} bytes)",
            png.display(),
            shot.len()
        );
    }
    let dom = run("--dump-dom")?;
    let _ = std::fs::remove_dir_all(&profile);
    Ok(text_of(&String::from_utf8_lossy(&dom)))
}

/// The text of an HTML document: what is outside tags, style and script,
/// entities decoded, whitespace runs made one space.
pub(crate) fn text_of(html: &str) -> String {
    let mut text = String::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        text.push_str(&rest[..lt]);
        text.push(' ');
        let tag = &rest[lt..];
        let skip_to = ["<style", "<script"]
            .iter()
            .find(|open| tag.starts_with(**open))
            .map(|open| format!("</{}", &open[1..]));
        rest = match skip_to.and_then(|close| tag.find(&close)) {
            Some(end) => &tag[end..],
            None => &tag[1..],
        };
        match rest.find('>') {
            Some(gt) => rest = &rest[gt + 1..],
            None => rest = "",
        }
    }
    text.push_str(rest);
    let decoded = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_a_page_is_what_a_reader_sees() {
        let html = "<html><head><title>krgiso cluster</title><style>td { color: red; }</style></head>\
                    <body><h1>node1</h1><table><tr><td class=\"ip\">10.77.0.131</td><td>a &lt;b&gt; &amp; c</td></tr></table>\
                    <script>var x = '<td>';</script><p>end</p></body></html>";
        assert_eq!(
            text_of(html),
            "krgiso cluster node1 10.77.0.131 a <b> & c end"
        );
    }
}
