fn main() -> std::process::ExitCode {
    // Installed as /sbin/mount.fuse.bae, it is mount(8)'s helper.
    if bae::cli::mount::invoked_as_helper() {
        return bae::cli::mount::helper_main();
    }
    bae::cli::main()
}
