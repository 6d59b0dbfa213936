from twisted.application.service import ServiceMaker

shellm = ServiceMaker("SheLLM", "shellm.tap", "One HTTP API for LLM CLIs and API providers.", "shellm")
