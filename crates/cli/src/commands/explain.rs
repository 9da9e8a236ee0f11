//! `cloister explain`: prints what an error code means.

use crate::errors::{all_codes, lookup, print_json, CliError, CliResult};
use clap::Args;

/// Arguments of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The code to explain, e.g. E101.
    #[arg(long, required_unless_present = "list")]
    pub error_code: Option<String>,
    /// Print every code as JSON.
    #[arg(long, conflicts_with = "error_code")]
    pub list: bool,
}

/// Runs `explain`.
pub fn run(args: ExplainArgs) -> CliResult<()> {
    if args.list {
        let rows: Vec<_> = all_codes()
            .map(|i| {
                serde_json::json!({
                    "Code": i.code,
                    "ExitStatus": i.exit.status(),
                    "Summary": i.summary,
                    "Explanation": i.explanation,
                })
            })
            .collect();
        return print_json(&rows);
    }
    let code = args.error_code.unwrap_or_default();
    match lookup(&code) {
        Some(info) => {
            println!("{}: {}", info.code, info.summary);
            println!("Exit status: {}", info.exit.status());
            println!();
            println!("{}", info.explanation);
            Ok(())
        }
        None => Err(CliError::msg("E001", format!("no such error code: {code}"))),
    }
}
