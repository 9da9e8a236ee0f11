//! `cloister explain`: prints what an error code means: Cloister's own codes (`E` and three
//! digits) and nitro-cli's (`E00`-`E60`, with the Cloister codes that map to each).

use crate::codes;
use crate::errors::{all_codes, lookup, print_json, CliError, CliResult};
use crate::nitro::{self, lookup_nitro, nitro_code_for, ErrorStyle, HELP_LINK_BASE};
use clap::Args;

/// Arguments of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The code to explain: Cloister's (E101) or nitro-cli's (E26).
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
                    "NitroCode": nitro_code_for(i),
                    "Summary": i.summary,
                    "Explanation": i.explanation,
                })
            })
            .collect();
        return print_json(&rows);
    }
    let code = args.error_code.unwrap_or_default();
    if let Some(info) = lookup(&code) {
        println!("{}: {}", info.code, info.summary);
        println!("Exit status: {}", info.exit.status());
        println!(
            "nitro-cli code: {} (the exit status when run as nitro-cli)",
            nitro_code_for(info)
        );
        println!();
        println!("{}", info.explanation);
        return Ok(());
    }
    if let Some(n) = lookup_nitro(&code) {
        let ours: Vec<&str> = all_codes()
            .filter(|i| nitro_code_for(i) == n.code)
            .map(|i| i.code.as_str())
            .collect();
        let mut text = format!("{} {}\n", n.message, n.explanation);
        if ours.is_empty() {
            text.push_str("Cloister reports no error under this code.\n");
        } else {
            text.push_str(&format!(
                "Cloister's codes reported under it: {} (`explain --error-code` on each says more).\n",
                ours.join(", ")
            ));
        }
        text.push_str(&format!(
            "Exit status as nitro-cli: {}\nFor more details, please visit {HELP_LINK_BASE}{}",
            n.status(),
            n.code
        ));
        // nitro-cli explains on standard error; `cloister` prints on standard output.
        if nitro::style() == ErrorStyle::Nitro {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        return Ok(());
    }
    Err(CliError::msg(
        codes::E001,
        format!("no such error code: {code}"),
    ))
}
