//! `containerd-shim-rgcs-v1`: containerd's shim v2 for rgcs (runtime type `io.containerd.rgcs.v1`).
//! Everything is in [`rgcs_host_shim::shim`].

fn main() -> std::process::ExitCode {
    rgcs_host_shim::shim::main()
}
