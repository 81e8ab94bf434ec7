fn main() -> std::process::ExitCode {
    bae::cli::main()
}
