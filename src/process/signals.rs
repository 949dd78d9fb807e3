//! Process signals: the shutdown request (Ctrl-C, SIGTERM) and SIGHUP, which reloads
//! the configuration as nginx and HAProxy do.

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called (not
/// when first polled), so a signal during start-up is not lost to the default action.
/// Must be called inside the runtime.
pub fn shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut i), Ok(mut t)) => {
                    tokio::select! {
                        _ = i.recv() => {},
                        _ = t.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Calls `reload` on every SIGHUP, forever. The handler is installed when this is
/// called, not when the future is first polled: a server calls it before it says it is
/// listening, so a SIGHUP sent the moment it is ready is not missed.
/// Must be called inside the runtime.
pub fn on_hangup(
    mut reload: impl FnMut() + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                return;
            };
            while hup.recv().await.is_some() {
                reload();
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut reload;
            std::future::pending::<()>().await;
        }
    }
}
