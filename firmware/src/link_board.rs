//! A real STM32F405 board: inputs arrive over USART1 (PA9 TX, PA10 RX, 115200 8N1, HSI clock)
//! and results go back the same way, through the embedded-hal 1.0 serial traits implemented by
//! stm32f4xx-hal, in the frames of `lepton_nn::protocol`: the board sends its hello frame, then
//! the host sends `UART_INPUT` + an input for each input and `UART_END` to finish.

use embedded_hal_nb::nb::block;
use embedded_hal_nb::serial::{Read, Write};
use lepton_nn::protocol::{self, Exit, Hello, ResultFrame, Sink, Summary, UART_END};
use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::{Rx, Tx};

pub struct Link {
    tx: Uart,
    rx: Rx<pac::USART1>,
}

struct Uart(Tx<pac::USART1>);

impl Sink for Uart {
    type Error = Exit;
    fn send(&mut self, bytes: &[u8]) -> Result<(), Exit> {
        for &b in bytes {
            block!(self.0.write(b)).map_err(|_| Exit::Io)?;
        }
        Ok(())
    }
}

impl Link {
    pub fn open(hello: &Hello) -> Result<Link, Exit> {
        let dp = pac::Peripherals::take().ok_or(Exit::Io)?;
        let mut rcc = dp.RCC.constrain();
        let gpioa = dp.GPIOA.split(&mut rcc);
        let serial = dp.USART1.serial((gpioa.pa9, gpioa.pa10), 115_200.bps(), &mut rcc).map_err(|_| Exit::Io)?;
        let (tx, rx) = serial.split();
        let mut link = Link { tx: Uart(tx), rx };
        protocol::send_hello(&mut link.tx, hello)?;
        Ok(link)
    }

    fn receive(&mut self) -> Result<u8, Exit> {
        block!(self.rx.read()).map_err(|_| Exit::Io)
    }

    /// `Ok(false)` when the host ends the session.
    pub fn read_input(&mut self, input: &mut [u8]) -> Result<bool, Exit> {
        if self.receive()? == UART_END {
            return Ok(false);
        }
        for p in input.iter_mut() {
            *p = self.receive()?;
        }
        Ok(true)
    }

    pub fn send_result(&mut self, frame: &ResultFrame) -> Result<(), Exit> {
        protocol::send_result(&mut self.tx, frame)
    }

    pub fn send_summary(&mut self, summary: &Summary) -> Result<(), Exit> {
        protocol::send_summary(&mut self.tx, summary)
    }
}

/// No host to exit to: log the code and halt (a debugger sees the breakpoint).
pub fn finish(code: Exit) -> ! {
    defmt::info!("exit code {} ({})", code.code(), code.name());
    loop {
        cortex_m::asm::bkpt();
        cortex_m::asm::wfi();
    }
}
