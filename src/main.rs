use clap::Parser;

fn main() {
    // Exit quietly when the reader of stdout goes away (`t2v-turbo info | head`).
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match t2v_turbo::cli::expand_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let cli = t2v_turbo::cli::Cli::parse_from(args);
    if let Err(e) = t2v_turbo::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
