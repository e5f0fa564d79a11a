//! Test counts from a JUnit XML report, as `cargo nextest run` writes it for a
//! profile with a `[profile.<name>.junit]` section.
//!
//! Only the totals on the root `<testsuites>` element are read:
//! `<testsuites tests=".." failures=".." errors=".." skipped="..">`. nextest
//! leaves skipped tests out of the report (and `skipped` is 0) unless the
//! profile sets `junit.report-skipped`; then `tests` includes them.
//! The XML is parsed with `roxmltree` (a small, dependency-free, read-only
//! parser) rather than by hand, so that entities, comments, attribute quoting
//! and attribute order are handled as XML says.

use std::{fs, path::Path};

use crate::util::Counts;

/// Reads the counts of the report at `path`.
pub fn read(path: &Path) -> Result<Counts, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The counts of a JUnit report: failures and errors are failed; skipped is
/// skipped; the rest of `tests` passed.
pub fn parse(xml: &str) -> Result<Counts, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !root.has_tag_name("testsuites") {
        return Err(format!(
            "the root element is <{}>, not <testsuites>",
            root.tag_name().name()
        ));
    }
    let count = |name: &str, required: bool| -> Result<u64, String> {
        match root.attribute(name) {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("<testsuites {name}=\"{v}\"> is not a count")),
            None if required => Err(format!("<testsuites> has no `{name}` attribute")),
            // Older reports have no `skipped` total.
            None => Ok(0),
        }
    };
    let tests = count("tests", true)?;
    let failed = count("failures", true)? + count("errors", false)?;
    let skipped = count("skipped", false)?;
    let passed = tests.checked_sub(failed + skipped).ok_or_else(|| {
        format!("<testsuites> counts {tests} tests but {failed} failed and {skipped} skipped")
    })?;
    Ok(Counts {
        passed,
        failed,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nextest_report() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="19" skipped="4" failures="1" errors="1" uuid="e305" time="0.930">
    <testsuite name="conduit-tests::conformance" tests="19" skipped="4" errors="1" failures="1">
        <testcase name="a &amp; b" classname="conduit-tests::conformance" time="0.000">
            <skipped message="Skipped: test does not match the run-ignored option"/>
        </testcase>
    </testsuite>
</testsuites>
"#;
        assert_eq!(
            parse(xml),
            Ok(Counts {
                passed: 13,
                failed: 2,
                skipped: 4
            })
        );
    }

    #[test]
    fn older_report_without_skipped_and_errors() {
        let xml = "<testsuites tests='3' failures='0'><!-- c --></testsuites>";
        assert_eq!(
            parse(xml),
            Ok(Counts {
                passed: 3,
                failed: 0,
                skipped: 0
            })
        );
    }

    #[test]
    fn bad_reports() {
        assert!(parse("").is_err());
        assert!(parse("<testsuites tests=\"3\" failures=\"0\">").is_err());
        assert!(parse("<testsuite tests=\"3\" failures=\"0\"/>").is_err());
        assert!(parse("<testsuites failures=\"0\"/>").is_err());
        assert!(parse("<testsuites tests=\"x\" failures=\"0\"/>").is_err());
        assert!(parse("<testsuites tests=\"1\" failures=\"2\"/>").is_err());
    }
}
