//! `gcs`: one static binary, two roles. As PID 1 it is the VM's init (mounts, modules, entropy,
//! reaping, power-off; see `rgcs-init`), which starts this same binary again as the agent.

use std::ffi::OsString;

fn main() {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    let args: Vec<OsString> = args.collect();
    if std::process::id() == 1 {
        rgcs_init::pid1::main(args);
    }
    if args.first().is_some_and(|a| a == "--zygote") {
        // A replacement executor zygote started by the agent (never returns).
        let root = args.get(1).map(std::path::PathBuf::from).unwrap_or_default();
        rgcs_agent::container::runtime::zygote_main(&root);
    }
    let args: Result<Vec<String>, OsString> = args.into_iter().map(OsString::into_string).collect();
    let cfg = match args
        .map_err(|a| format!("argument {a:?} is not UTF-8"))
        .and_then(|a| rgcs_agent::config::Config::parse(a).map_err(|e| e.to_string()))
    {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("gcs: {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(rgcs_agent::run(cfg));
}
