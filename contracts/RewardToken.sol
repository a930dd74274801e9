// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title RewardToken
/// @notice The ERC-20 in which Tally pays contributors ("Tally Reward", TLYR, 18 decimals). Only the owner mints.
contract RewardToken is ERC20, Ownable {
    constructor(address initialOwner) ERC20("Tally Reward", "TLYR") Ownable(initialOwner) {}

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
