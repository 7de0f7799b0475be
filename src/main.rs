use clap::Parser;

fn main() {
    // Exit quietly when the reader of stdout goes away (`t2v-turbo info | head`).
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = t2v_turbo::cli::Cli::parse();
    if let Err(e) = t2v_turbo::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
