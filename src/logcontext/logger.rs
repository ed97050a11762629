//! [`ContextLogger`]: a `log::Log` wrapper that tags every record with the current
//! context's request id.

use super::context::with_current_request_id;

/// A `log::Log` that prefixes every record's message with the current context's request
/// id (`"[GET-1] message"`, `"[sentinel] message"`) and passes it on to the logger it
/// wraps (Synapse's `LoggingContextFilter`).
///
/// ```
/// use weft::logcontext::ContextLogger;
///
/// struct Stderr;
/// impl log::Log for Stderr {
///     fn enabled(&self, _: &log::Metadata<'_>) -> bool { true }
///     fn log(&self, r: &log::Record<'_>) { eprintln!("{} {}", r.level(), r.args()) }
///     fn flush(&self) {}
/// }
/// // Installs it as the global logger: `ContextLogger::new(env_logger::Logger::from_default_env())` works too.
/// ContextLogger::new(Stderr).install(log::LevelFilter::Info).unwrap();
/// ```
#[derive(Debug)]
pub struct ContextLogger<L> {
    inner: L,
}

impl<L: log::Log> ContextLogger<L> {
    /// Wraps `inner`: records reach it with the request id in front of their message.
    pub fn new(inner: L) -> ContextLogger<L> {
        ContextLogger { inner }
    }

    /// The wrapped logger.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Installs this as the global logger (`log::set_boxed_logger`) and sets the maximum
    /// level.
    ///
    /// # Errors
    ///
    /// `log::SetLoggerError` if a global logger was already installed.
    pub fn install(self, max_level: log::LevelFilter) -> Result<(), log::SetLoggerError>
    where
        L: 'static,
    {
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(max_level);
        Ok(())
    }
}

impl<L: log::Log> log::Log for ContextLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        with_current_request_id(|id| {
            self.inner.log(
                &log::Record::builder()
                    .args(format_args!("[{id}] {}", record.args()))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
        })
    }

    fn flush(&self) {
        self.inner.flush()
    }
}
