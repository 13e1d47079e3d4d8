//! A real STM32F405 board: images arrive over USART1 (PA9 TX, PA10 RX, 115200 8N1, HSI clock)
//! and results go back the same way, through the embedded-hal 1.0 serial traits implemented by
//! stm32f4xx-hal.
//!
//! Protocol, host to board: `0x01` then the image bytes; `0x00` ends the session. Board to host:
//! at start `"LPRS"` + layer count; per image the same record as the QEMU results file; at the
//! end `"DONE"` + stack peak, arena bytes, model bytes.

use embedded_hal_nb::nb::block;
use embedded_hal_nb::serial::{Read, Write};
use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::{Rx, Tx};

use crate::{exit, Prediction};

pub struct Link {
    tx: Tx<pac::USART1>,
    rx: Rx<pac::USART1>,
}

impl Link {
    pub fn open(layers: usize) -> Result<Link, i32> {
        let dp = pac::Peripherals::take().ok_or(exit::IO)?;
        let mut rcc = dp.RCC.constrain();
        let gpioa = dp.GPIOA.split(&mut rcc);
        let serial = dp.USART1.serial((gpioa.pa9, gpioa.pa10), 115_200.bps(), &mut rcc).map_err(|_| exit::IO)?;
        let (tx, rx) = serial.split();
        let mut link = Link { tx, rx };
        link.send(b"LPRS")?;
        link.send(&[layers as u8])?;
        Ok(link)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), i32> {
        for &b in bytes {
            block!(self.tx.write(b)).map_err(|_| exit::IO)?;
        }
        Ok(())
    }

    fn receive(&mut self) -> Result<u8, i32> {
        block!(self.rx.read()).map_err(|_| exit::IO)
    }

    pub fn read_image(&mut self, pixels: &mut [u8]) -> Result<bool, i32> {
        if self.receive()? == 0 {
            return Ok(false);
        }
        for p in pixels.iter_mut() {
            *p = self.receive()?;
        }
        Ok(true)
    }

    pub fn write_result(&mut self, p: &Prediction) -> Result<(), i32> {
        self.send(&[p.class, p.logits.len() as u8])?;
        self.send(lepton_nn::types::as_u8(p.logits))?;
        self.send(&p.instructions.to_le_bytes())?;
        for n in p.per_layer {
            self.send(&n.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn write_summary(&mut self, stack_peak: u32, arena: u32, model: u32) -> Result<(), i32> {
        self.send(b"DONE")?;
        for v in [stack_peak, arena, model] {
            self.send(&v.to_le_bytes())?;
        }
        Ok(())
    }
}

/// No host to exit to: log the code and halt (a debugger sees the breakpoint).
pub fn finish(code: i32) -> ! {
    defmt::info!("exit code {}", code);
    loop {
        cortex_m::asm::bkpt();
        cortex_m::asm::wfi();
    }
}
