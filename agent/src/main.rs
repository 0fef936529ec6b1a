//! `gcs`: one static binary, three roles. As PID 1 it is the VM's init (mounts, modules, entropy,
//! reaping, power-off; see `rgcs-init`), which starts this same binary again as the agent; named
//! `pause` it is a pod sandbox's process.

use std::ffi::OsString;

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let args: Vec<OsString> = args.collect();
    // A pod sandbox's process (PID 1 of its own namespace, so this comes first).
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("pause")) {
        rgcs_agent::pause::main();
    }
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
