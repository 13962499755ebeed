//! The `watchdog` section: a Linux watchdog device (`/dev/watchdog`) that resets the machine when
//! the leader's agent stops kicking it, and the fence process that is Regent's software watchdog.
//!
//! The device is opened when this member becomes the leader, its timeout set to
//! `ttl − safety_margin` (`safety_margin: -1` ⇒ `ttl / 2`), kicked after every successful renew and
//! closed with the magic character when the member stops leading or the cluster is paused. With
//! `mode: required` a member whose device cannot be opened and configured does not take the
//! lock; with `automatic` it leads without one and says so.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use serde_json::Value;
use tracing::{info, warn};

use crate::config::ConfigError;

/// Why the watchdog device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("cannot open {}: {source}", .device.display())]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("not a watchdog device ({0})")]
    NotAWatchdog(std::io::Error),
    #[error("its timeout could not be set to {wanted}s (it is {})", .actual.map_or("unknown".to_string(), |a| format!("{a}s")))]
    Timeout {
        wanted: u32,
        actual: Option<libc::c_int>,
    },
}

/// `watchdog.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    Off,
    Automatic,
    Required,
}

/// How the device is driven: the kernel's ioctls, or `testing` — a FIFO or file that receives
/// the keepalive and close bytes with no ioctl (for tests; never a protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogDriver {
    Default,
    Testing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    /// Seconds; `-1` ⇒ the timeout is half the ttl.
    pub safety_margin: i64,
    pub driver: WatchdogDriver,
    /// The fence process (see `fence.rs`); on unless `watchdog.fence: false`.
    pub fence: bool,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            mode: WatchdogMode::Automatic,
            device: PathBuf::from("/dev/watchdog"),
            safety_margin: 5,
            driver: WatchdogDriver::Default,
            fence: true,
        }
    }
}

impl WatchdogConfig {
    /// Parse the section; `Err` names the key. An unknown mode turns the watchdog off with a
    /// warning, as the YAML `off` (a boolean false) does.
    pub fn from_value(
        v: &Value,
        warnings: &mut Vec<String>,
    ) -> Result<WatchdogConfig, ConfigError> {
        let mut cfg = WatchdogConfig::default();
        let map = match v {
            Value::Null => return Ok(cfg),
            Value::Object(m) => m,
            other => {
                return Err(ConfigError::invalid(
                    "watchdog",
                    format!("expected a mapping, got {other}"),
                ))
            }
        };
        for (key, value) in map {
            match key.as_str() {
                "mode" => cfg.mode = parse_mode(value, warnings),
                "device" => match value {
                    Value::String(s) if !s.is_empty() => cfg.device = PathBuf::from(s),
                    other => {
                        return Err(ConfigError::invalid(
                            "watchdog.device",
                            format!("expected a path, got {other}"),
                        ))
                    }
                },
                "safety_margin" => {
                    cfg.safety_margin = match value {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => s.trim().parse().ok(),
                        _ => None,
                    }
                    .filter(|m| *m >= -1)
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "watchdog.safety_margin",
                            format!("expected an integer ≥ -1, got {value}"),
                        )
                    })?
                }
                "driver" => {
                    cfg.driver = match value.as_str() {
                        Some("default") => WatchdogDriver::Default,
                        Some("testing") => WatchdogDriver::Testing,
                        _ => {
                            return Err(ConfigError::invalid(
                                "watchdog.driver",
                                format!("expected default or testing, got {value}"),
                            ))
                        }
                    }
                }
                "fence" => {
                    cfg.fence = match value {
                        Value::Bool(b) => *b,
                        Value::String(s) => crate::config::parse_bool_str(s).ok_or_else(|| {
                            ConfigError::invalid(
                                "watchdog.fence",
                                format!("expected a boolean, got {value}"),
                            )
                        })?,
                        other => {
                            return Err(ConfigError::invalid(
                                "watchdog.fence",
                                format!("expected a boolean, got {other}"),
                            ))
                        }
                    }
                }
                other => warnings.push(format!("watchdog.{other}: unknown key, ignored")),
            }
        }
        Ok(cfg)
    }

    /// The device timeout for a ttl, in seconds.
    pub fn timeout(&self, ttl: u32) -> u32 {
        let ttl = i64::from(ttl);
        let t = if self.safety_margin == -1 {
            ttl / 2
        } else {
            ttl - self.safety_margin
        };
        t.clamp(1, i64::from(u32::MAX)) as u32
    }
}

fn parse_mode(v: &Value, warnings: &mut Vec<String>) -> WatchdogMode {
    let text = match v {
        Value::Bool(false) => return WatchdogMode::Off,
        Value::Bool(true) => "true".to_string(),
        Value::String(s) => s.to_ascii_lowercase(),
        other => other.to_string(),
    };
    match text.as_str() {
        "require" | "required" => WatchdogMode::Required,
        "auto" | "automatic" => WatchdogMode::Automatic,
        "off" | "disable" | "disabled" => WatchdogMode::Off,
        _ => {
            warnings.push(format!(
                "watchdog.mode: {text} is not off, automatic or required: the watchdog is off"
            ));
            WatchdogMode::Off
        }
    }
}

// Linux <linux/watchdog.h>.
const WDIOC_GETSUPPORT: libc::c_ulong = 0x8028_5700;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
const WDIOC_GETTIMEOUT: libc::c_ulong = 0x8004_5707;
const WDIOF_SETTIMEOUT: u32 = 0x0080;

/// `struct watchdog_info`.
#[repr(C)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

/// The device while this member leads.
pub struct Watchdog {
    cfg: WatchdogConfig,
    device: Option<File>,
    /// The ttl the open device's timeout was set for: a new ttl (dynamic configuration)
    /// re-opens it with the new timeout.
    configured_for_ttl: u32,
    /// Why the device could not be used the last time it was needed.
    failure: Option<String>,
}

impl Watchdog {
    pub fn new(cfg: WatchdogConfig) -> Watchdog {
        Watchdog {
            cfg,
            device: None,
            configured_for_ttl: 0,
            failure: None,
        }
    }

    /// `watchdog_failed` as members publish it: required, and not working.
    pub fn failed(&self) -> bool {
        self.cfg.mode == WatchdogMode::Required && self.failure.is_some()
    }

    /// Why this member may not lead (required mode and the device unusable).
    pub fn cannot_lead(&self) -> Option<String> {
        self.failed().then(|| {
            format!(
                "watchdog.mode is required and the watchdog is not working: {}",
                self.failure.as_deref().unwrap_or("unknown")
            )
        })
    }

    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.device.is_some()
    }

    /// Open and configure the device (once), then kick it. Called by the leader after each
    /// successful acquire or renew.
    pub fn keepalive(&mut self, ttl: u32) {
        if self.cfg.mode == WatchdogMode::Off {
            return;
        }
        if self.device.is_some() && self.configured_for_ttl != ttl {
            info!(ttl, "the ttl changed: configuring the watchdog again");
            self.disable();
        }
        if self.device.is_none() {
            match self.open(ttl) {
                Ok(f) => {
                    info!(device = %self.cfg.device.display(), timeout = self.cfg.timeout(ttl), "watchdog activated");
                    self.device = Some(f);
                    self.configured_for_ttl = ttl;
                    self.failure = None;
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.failure.as_deref() != Some(e.as_str()) {
                        warn!(device = %self.cfg.device.display(), error = %e, "cannot use the watchdog");
                    }
                    self.failure = Some(e);
                    return;
                }
            }
        }
        if let Some(dev) = self.device.as_mut() {
            if let Err(e) = dev.write_all(b"1").and_then(|()| dev.flush()) {
                warn!(device = %self.cfg.device.display(), error = %e, "watchdog keepalive failed");
                self.failure = Some(format!("keepalive failed: {e}"));
                self.device = None;
            }
        }
    }

    /// Check the device is usable without keeping it open (required mode, before racing for
    /// the lock): opening a watchdog device starts it, so only the path is checked here.
    pub fn check_before_leading(&mut self) {
        if self.cfg.mode != WatchdogMode::Required || self.device.is_some() {
            return;
        }
        match std::fs::metadata(&self.cfg.device) {
            Ok(_) => self.failure = None,
            Err(e) => self.failure = Some(format!("{}: {e}", self.cfg.device.display())),
        }
    }

    /// Stop leading (demote, release, pause, shutdown): close with the magic character so the
    /// device stops counting.
    pub fn disable(&mut self) {
        if let Some(mut dev) = self.device.take() {
            if let Err(e) = dev.write_all(b"V").and_then(|()| dev.flush()) {
                warn!(device = %self.cfg.device.display(), error = %e, "cannot disable the watchdog");
            } else {
                info!(device = %self.cfg.device.display(), "watchdog disabled");
            }
        }
    }

    fn open(&self, ttl: u32) -> Result<File, WatchdogError> {
        // The testing driver's file keeps every byte a device would have received.
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .append(self.cfg.driver == WatchdogDriver::Testing)
            .open(&self.cfg.device)
            .map_err(|source| WatchdogError::Open {
                device: self.cfg.device.clone(),
                source,
            })?;
        if self.cfg.driver == WatchdogDriver::Testing {
            return Ok(dev);
        }
        let timeout = self.cfg.timeout(ttl);
        let fd = dev.as_raw_fd();
        let mut info = WatchdogInfo {
            options: 0,
            firmware_version: 0,
            identity: [0; 32],
        };
        // SAFETY: WDIOC_GETSUPPORT fills a struct watchdog_info we own.
        if unsafe { libc::ioctl(fd, WDIOC_GETSUPPORT as _, &mut info) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = (&dev).write_all(b"V");
            return Err(WatchdogError::NotAWatchdog(e));
        }
        if info.options & WDIOF_SETTIMEOUT != 0 {
            let mut t: libc::c_int = timeout as libc::c_int;
            // SAFETY: WDIOC_SETTIMEOUT reads and writes one int we own.
            unsafe { libc::ioctl(fd, WDIOC_SETTIMEOUT as _, &mut t) };
        }
        let mut actual: libc::c_int = 0;
        // SAFETY: WDIOC_GETTIMEOUT writes one int we own.
        let got = unsafe { libc::ioctl(fd, WDIOC_GETTIMEOUT as _, &mut actual) };
        if got != 0 || actual <= 0 || actual as u32 > timeout {
            let _ = (&dev).write_all(b"V");
            return Err(WatchdogError::Timeout {
                wanted: timeout,
                actual: (got == 0).then_some(actual),
            });
        }
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_patroni_spellings() {
        let mut w = Vec::new();
        let c = WatchdogConfig::from_value(&json!({"mode": false}), &mut w).unwrap();
        assert_eq!(c.mode, WatchdogMode::Off);
        let c = WatchdogConfig::from_value(
            &json!({"mode": "Required", "device": "/dev/watchdog1", "safety_margin": -1}),
            &mut w,
        )
        .unwrap();
        assert_eq!(c.mode, WatchdogMode::Required);
        assert_eq!(c.device, PathBuf::from("/dev/watchdog1"));
        assert_eq!(c.timeout(30), 15);
        let c = WatchdogConfig::from_value(&json!({"mode": "auto"}), &mut w).unwrap();
        assert_eq!(c.mode, WatchdogMode::Automatic);
        assert_eq!(c.timeout(30), 25);
        assert!(c.fence);
        assert!(w.is_empty());
        let c = WatchdogConfig::from_value(&json!({"mode": "sometimes"}), &mut w).unwrap();
        assert_eq!(c.mode, WatchdogMode::Off);
        assert!(w[0].starts_with("watchdog.mode"));
        assert_eq!(
            WatchdogConfig::from_value(&Value::Null, &mut w).unwrap(),
            WatchdogConfig::default()
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut w = Vec::new();
        for (v, key) in [
            (json!({"safety_margin": "x"}), "watchdog.safety_margin"),
            (json!({"safety_margin": -2}), "watchdog.safety_margin"),
            (json!({"device": 5}), "watchdog.device"),
            (json!({"fence": "maybe"}), "watchdog.fence"),
            (json!({"driver": "fancy"}), "watchdog.driver"),
            (json!("on"), "watchdog:"),
        ] {
            let e = WatchdogConfig::from_value(&v, &mut w)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn required_mode_without_a_device_cannot_lead() {
        let mut wd = Watchdog::new(WatchdogConfig {
            mode: WatchdogMode::Required,
            device: PathBuf::from("/nonexistent/watchdog"),
            ..WatchdogConfig::default()
        });
        wd.check_before_leading();
        assert!(wd.failed());
        assert!(wd.cannot_lead().unwrap().contains("/nonexistent/watchdog"));
        wd.keepalive(30);
        assert!(!wd.is_active());
        assert!(wd.failed());
    }

    #[test]
    fn a_file_is_not_a_watchdog_device() {
        let dir = std::env::temp_dir().join(format!("regent-wd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("device");
        std::fs::write(&path, b"").unwrap();
        let mut wd = Watchdog::new(WatchdogConfig {
            mode: WatchdogMode::Required,
            device: path.clone(),
            ..WatchdogConfig::default()
        });
        wd.keepalive(30);
        assert!(!wd.is_active());
        assert!(wd.cannot_lead().unwrap().contains("not a watchdog device"));
        // The testing driver writes keepalives and the magic close to it.
        let mut wd = Watchdog::new(WatchdogConfig {
            mode: WatchdogMode::Required,
            device: path.clone(),
            driver: WatchdogDriver::Testing,
            ..WatchdogConfig::default()
        });
        wd.keepalive(30);
        wd.keepalive(30);
        assert!(wd.is_active() && !wd.failed());
        // A new ttl: closed and opened again (with the new timeout on a real device).
        wd.keepalive(20);
        assert!(wd.is_active());
        wd.disable();
        assert!(!wd.is_active());
        // The first V: the default driver closed the "device" it could not configure.
        assert_eq!(std::fs::read(&path).unwrap(), b"V11V1V");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
